"""Token heatmaps of a skill: which response tokens a skill made likelier or less likely.

OPID's skill advantage is per token, ``A_skill = l_skill - l_old``: the old policy's log-prob of
a sampled token with the skill injected into the prompt, minus its log-prob without it. A
scalar metric (``skill/adv_mean``) hides *where* a skill acts; this module shows it, one response
at a time, as coloured text. It reads the rows the trainer records with ``heatmap_rows > 0``
(``<output_dir>/heatmaps/step-<global_step>-rank<r>.jsonl``, one JSON object per line with
``tokens``, ``l_old``, ``l_skill``, the two prompts, the skill and the row's outcome) and renders
them as a self-contained HTML page: inline CSS only, no script and no external resource, so a
report can be opened from disk, attached to an issue or shown in a notebook cell.

Everything that came from the model, the environment or the skill extractor is HTML-escaped:
a generated ``<script>`` tag is shown as text, never run.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]

#: End colours of the diverging scale (ColorBrewer RdBu ends): red = promoted, blue = suppressed.
POSITIVE_RGB = (178, 24, 43)
NEGATIVE_RGB = (33, 102, 172)
#: Colour of a token whose advantage is not a finite number (a masked or corrupt value).
INVALID_RGB = (200, 200, 200)
#: Beyond this share of full saturation the token text turns white, to stay readable.
_DARK_TEXT_LIMIT = 0.6
_STEP_FILE = re.compile(r"^step-(\d+)(?:-rank(\d+))?\.jsonl$")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

def load_records(path_or_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of one JSONL file, or of every ``step-*.jsonl`` in a folder, by step then rank.

    A run killed mid-write leaves a torn last line; it is skipped with a warning so a report of
    an interrupted run still renders. Any other unreadable line is skipped the same way (a viewer
    should show what it can), but it is named in the warning.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        records: list[dict[str, Any]] = []
        for file in _step_files(path):
            records.extend(_read_jsonl(file))
        return records
    if not path.exists():
        raise FileNotFoundError(f"no heatmap records at {path}")
    return _read_jsonl(path)


def _step_files(directory: Path) -> list[Path]:
    """The ``step-<n>[-rank<r>].jsonl`` files of a folder, numerically by step then rank.

    Sorting the names as text would put step 10 before step 2."""
    found = []
    for file in directory.iterdir():
        match = _STEP_FILE.match(file.name)
        if match and file.is_file():
            found.append((int(match.group(1)), int(match.group(2) or 0), file))
    return [file for _, _, file in sorted(found)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a file, one per line; unparsable lines are warned about and skipped."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            where = "torn last line" if number == len(lines) else "unreadable line"
            logger.warning("%s:%d: %s skipped", path, number, where)
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            logger.warning("%s:%d: not a JSON object, skipped", path, number)
    return records


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------

def token_advantages(record: Record) -> list[float]:
    """A_skill of each response token, ``l_skill - l_old`` (positive: the skill promoted it).

    The lists are cut to the shortest of ``tokens``, ``l_old`` and ``l_skill``, so a record with a
    truncated field still lines its values up with its tokens."""
    l_old, l_skill = _floats(record.get("l_old")), _floats(record.get("l_skill"))
    n = min(len(_tokens(record)), len(l_old), len(l_skill))
    return [l_skill[i] - l_old[i] for i in range(n)]


def _floats(values: Any) -> list[float]:
    """A list of floats; a missing or non-numeric entry becomes NaN (rendered grey, not counted)."""
    out = []
    for value in values or []:
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _tokens(record: Record) -> list[str]:
    return [str(t) for t in record.get("tokens") or []]


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def token_stats(records: Iterable[Record]) -> dict[str, tuple[float, int]]:
    """Per token string: (mean A_skill, number of occurrences) over all the records' tokens."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for record in records:
        for token, value in zip(_tokens(record), token_advantages(record)):
            if math.isfinite(value):
                sums[token] = sums.get(token, 0.0) + value
                counts[token] = counts.get(token, 0) + 1
    return {token: (sums[token] / counts[token], counts[token]) for token in sums}


def top_tokens(records: Iterable[Record], k: int = 10, min_count: int = 1
               ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` most promoted and ``k`` most suppressed token strings, by mean A_skill.

    Only tokens seen at least ``min_count`` times take part (raise it to keep one-off tokens from
    dominating a large sample). Promoted tokens have a positive mean, suppressed ones a negative
    mean, so with no promoted token the first list is empty rather than showing the least
    suppressed. Ties go to the more frequent token, then alphabetically, for a stable order."""
    stats = [(token, mean, count) for token, (mean, count) in token_stats(records).items()
             if count >= min_count]
    promoted = sorted((s for s in stats if s[1] > 0), key=lambda s: (-s[1], -s[2], s[0]))
    suppressed = sorted((s for s in stats if s[1] < 0), key=lambda s: (s[1], -s[2], s[0]))
    return [(t, m) for t, m, _ in promoted[:k]], [(t, m) for t, m, _ in suppressed[:k]]


def _peak(values: Iterable[float]) -> float:
    """The largest finite |value| (0 for none)."""
    return max((abs(v) for v in _finite(values)), default=0.0)


def _row_scale(values: Sequence[float], scale: float | None) -> float:
    """Full saturation: the given scale, else the row's max |A_skill| (1 for an all-zero row)."""
    if scale is not None and math.isfinite(scale) and scale > 0:
        return float(scale)
    return _peak(values) or 1.0


def token_colour(value: float, scale: float) -> tuple[int, int, int]:
    """The background of a token: white at 0, towards red (promoted) or blue (suppressed).

    Linear in ``value / scale`` and clipped at ±1, so the scale is symmetric around 0 and equal
    magnitudes of promotion and suppression look equally strong."""
    if not math.isfinite(value):
        return INVALID_RGB
    share = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    end = POSITIVE_RGB if share >= 0 else NEGATIVE_RGB
    return tuple(round(255 + abs(share) * (c - 255)) for c in end)  # type: ignore[return-value]


def _css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _fmt(value: float, signed: bool = False) -> str:
    """Four decimals, or scientific notation for magnitudes too small to show that way."""
    if not math.isfinite(value):
        return str(value)
    sign = "+" if signed else ""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:{sign}.3e}"
    return f"{value:{sign}.4f}"


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------

def _escape(text: Any) -> str:
    """HTML-escaped text with control characters written as ``\\xNN``.

    A raw NUL or escape byte would otherwise vanish or break the page, and the Unicode control
    pictures (U+2400...) are missing from many fonts; ``\\x14`` reads the same everywhere."""
    cleaned = "".join(f"\\x{ord(c):02x}" if (ord(c) < 32 and c not in "\n\t") or c == "\x7f" else c
                      for c in str(text))
    return html.escape(cleaned, quote=True)


def _token_text_html(token: str) -> str:
    """A token's text made visible: newlines break the line after a faint ↵, tabs show ⇥,
    a whitespace-only token shows its spaces as faint dots, an empty token a faint ∅."""
    if token == "":
        return '<span class="ws">\u2205</span>'
    if token.strip(" ") == "":
        return f'<span class="ws">{"·" * len(token)}</span>'
    parts = []
    for i, line in enumerate(token.replace("\r\n", "\n").split("\n")):
        if i:
            parts.append('<span class="ws">\u21b5</span><br>')
        parts.append(_escape(line).replace("\t", '<span class="ws">\u21e5</span>\t'))
    return "".join(parts)


def _token_span(token: str, l_old: float, l_skill: float, scale: float) -> str:
    """One coloured token with its numbers in the hover title."""
    value = l_skill - l_old
    rgb = token_colour(value, scale)
    dark = math.isfinite(value) and abs(value) / scale > _DARK_TEXT_LIMIT
    title = f"l_old={_fmt(l_old)}, l_skill={_fmt(l_skill)}, A_skill={_fmt(value, signed=True)}"
    cls = "tok dark" if dark else "tok"
    return (f'<span class="{cls}" style="background:{_css_rgb(rgb)}" title="{html.escape(title)}">'
            f"{_token_text_html(token)}</span>")


def _highlight_injection(prompt: str, skill_prompt: str, skill: str) -> str:
    """The skill prompt, escaped, with the injected skill block marked.

    The block is what ``skill_prompt`` adds to ``prompt`` (their common prefix and suffix are cut
    off), which finds the block whatever its title or chat template; without the original prompt
    the skill text itself is looked up."""
    if prompt and skill_prompt != prompt:
        start = _common_prefix(prompt, skill_prompt)
        end = len(skill_prompt) - _common_suffix(prompt[start:], skill_prompt[start:])
    else:
        start = skill_prompt.find(skill.strip()) if skill.strip() else -1
        end = start + len(skill.strip())
    if start < 0 or end <= start:
        return _escape(skill_prompt)
    return (_escape(skill_prompt[:start]) + '<mark class="skill-block">'
            + _escape(skill_prompt[start:end]) + "</mark>" + _escape(skill_prompt[end:]))


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    return _common_prefix(a[::-1], b[::-1])


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

def _legend_html(scale: float) -> str:
    """The colour bar of a row: -scale (blue, suppressed) ... 0 (white) ... +scale (red, promoted)."""
    gradient = (f"linear-gradient(to right, {_css_rgb(NEGATIVE_RGB)}, rgb(255, 255, 255), "
                f"{_css_rgb(POSITIVE_RGB)})")
    return ('<div class="legend">'
            f'<span class="legend-label">{_fmt(-scale, signed=True)} suppressed</span>'
            f'<span class="legend-bar" style="background:{gradient}"></span>'
            f'<span class="legend-label">promoted {_fmt(scale, signed=True)}</span>'
            '<span class="legend-note">A_skill = l_skill &minus; l_old; 0 is white</span></div>')


def _meta_html(record: Record, values: Sequence[float]) -> str:
    """The side panel of a row: skill, routing kind, outcome, and the row's A_skill summary."""
    success = record.get("success")
    outcome = "success" if success else "failure" if success is not None else "unknown"
    finite = _finite(values)
    mean = sum(finite) / len(finite) if finite else math.nan
    kind = _escape(record.get("kind", "?"))
    items = [
        ("kind", f'<span class="kind">{kind}</span> skill, &lambda; = {_fmt(_num(record, "coef"))}'),
        ("outcome", (f'<span class="{outcome}">{outcome}</span>, '
                     f'return {_fmt(_num(record, "episode_return"))}')),
        ("A_ep", _fmt(_num(record, "outcome_advantage"), signed=True)),
        ("A_skill", f"mean {_fmt(mean, signed=True)}, {len(finite)} tokens"),
        ("&lambda;&middot;A_skill", (f"up to &plusmn;{_fmt(_num(record, 'coef') * _peak(finite))} "
                                     "added to A_ep (what the loss sees)")),
    ]
    if record.get("task_type"):
        items.append(("task type", _escape(record["task_type"])))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items)
    skill = _escape(record.get("skill", ""))
    return (f'<div class="meta"><dl>{rows}</dl><div class="skill-label">skill</div>'
            f'<pre class="skill">{skill}</pre></div>')


def _num(record: Record, key: str) -> float:
    try:
        return float(record.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def _prompts_html(record: Record, open_prompt: bool = False) -> str:
    """The two prompts, folded: the injected one with its skill block marked, and the original.

    ``open_prompt`` unfolds the injected one (for a screenshot; a reader clicks instead)."""
    prompt, skill_prompt = str(record.get("prompt", "")), str(record.get("skill_prompt", ""))
    marked = _highlight_injection(prompt, skill_prompt, str(record.get("skill", "")))
    return (f'<details{" open" if open_prompt else ""}><summary>prompt with the skill injected</summary>'
            f'<pre class="prompt">{marked}</pre></details>'
            '<details><summary>original prompt (what the policy saw)</summary>'
            f'<pre class="prompt">{_escape(prompt)}</pre></details>')


def render_row_html(record: Record, scale: float | None = None, open_prompt: bool = False) -> str:
    """One record as an HTML fragment: its response as a token heatmap, beside it the skill and
    the outcome, below it the prompts.

    ``scale`` is the |A_skill| of full saturation; by default the row's own max |A_skill|, which
    shows the structure of any row, however small its values (the legend states the scale, so
    rows with different scales are still read correctly). Pass one value to compare rows.
    ``open_prompt`` shows the injected prompt unfolded."""
    tokens = _tokens(record)
    l_old, l_skill = _floats(record.get("l_old")), _floats(record.get("l_skill"))
    values = token_advantages(record)
    full = _row_scale(values, scale)
    spans = "".join(_token_span(tokens[i], l_old[i], l_skill[i], full) for i in range(len(values)))
    header = (f'step {_escape(record.get("global_step", "?"))} &middot; trajectory '
              f'<code>{_escape(record.get("trajectory_id", "?"))}</code> &middot; '
              f'turn {_escape(record.get("step_index", "?"))}')
    return ('<section class="row">'
            f'<div class="row-head">{header}</div>{_legend_html(full)}'
            f'<div class="row-body"><div class="response">{spans}</div>{_meta_html(record, values)}</div>'
            f"{_prompts_html(record, open_prompt)}</section>")


def _token_chips_html(entries: Sequence[tuple[str, float]], stats: Mapping[str, tuple[float, int]],
                      scale: float) -> str:
    """Summary tokens in one flowing line, each coloured by its mean A_skill, with the mean and count
    (a line, not a table, so the rows themselves stay in view)."""
    if not entries:
        return '<span class="empty">none</span>'
    return " ".join(  # the spaces are where the line may wrap
        f'<span class="chip"><span class="tok" style="background:{_css_rgb(token_colour(mean, scale))}">'
        f'{_token_text_html(token)}</span> {_fmt(mean, signed=True)} &times;{stats[token][1]}</span>'
        for token, mean in entries)


def _summary_html(records: Sequence[Record], k: int) -> str:
    """The top of a report: how many rows and tokens, the mean A_skill, the extreme tokens."""
    values = _finite(v for r in records for v in token_advantages(r))
    mean = sum(values) / len(values) if values else math.nan
    kinds: dict[str, int] = {}
    for record in records:
        kinds[str(record.get("kind", "?"))] = kinds.get(str(record.get("kind", "?")), 0) + 1
    stats = token_stats(records)
    promoted, suppressed = top_tokens(records, k)
    scale = _row_scale([m for _, m in promoted + suppressed], None)
    kind_text = ", ".join(f"{_escape(kind)} {count}" for kind, count in sorted(kinds.items()))
    facts = (f"<li><b>{len(records)}</b> rows ({kind_text or 'none'}), <b>{len(values)}</b> tokens</li>"
             f"<li>mean A_skill <b>{_fmt(mean, signed=True)}</b>; "
             f"{sum(v > 0 for v in values)} tokens promoted, {sum(v < 0 for v in values)} suppressed</li>")
    return ('<section class="summary"><h2>Summary</h2>'
            f"<ul>{facts}</ul><dl class=\"tops\">"
            f"<dt>Most promoted tokens</dt><dd>{_token_chips_html(promoted, stats, scale)}</dd>"
            f"<dt>Most suppressed tokens</dt><dd>{_token_chips_html(suppressed, stats, scale)}</dd>"
            "</dl></section>")


_CSS = """
.opid-heatmap { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  font-size: 14px; line-height: 1.5; max-width: 1400px; }
.opid-heatmap h1 { font-size: 20px; margin: 0 0 8px; }
.opid-heatmap h2 { font-size: 16px; margin: 0 0 6px; }
.opid-heatmap h3 { font-size: 13px; margin: 4px 0; }
.opid-heatmap .summary, .opid-heatmap .row { border: 1px solid #d0d7de; border-radius: 6px;
  padding: 10px 12px; margin: 0 0 12px; background: #fff; }
.opid-heatmap .summary ul { margin: 0 0 6px; padding-left: 18px; }
.opid-heatmap .tops dd { line-height: 1.9; }
.opid-heatmap .chip { white-space: nowrap; margin-right: 12px; font-size: 12px; color: #57606a; }
.opid-heatmap .chip .tok { font-family: ui-monospace, Menlo, Consolas, monospace; color: #1f2328;
  padding: 0 2px; }
.opid-heatmap .row-head { color: #57606a; font-size: 13px; }
.opid-heatmap .row-body { display: flex; gap: 16px; align-items: flex-start; margin: 6px 0; }
.opid-heatmap .response { flex: 3 1 0; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 13px; white-space: pre-wrap; word-break: break-word; border: 1px solid #eaeef2;
  border-radius: 4px; padding: 6px; min-height: 1.5em; }
.opid-heatmap .tok { border-right: 1px solid rgba(0, 0, 0, 0.08); border-radius: 2px; }
.opid-heatmap .tok:hover { outline: 1px solid #1f2328; }
.opid-heatmap .tok.dark { color: #fff; }
.opid-heatmap .ws { opacity: 0.45; }
.opid-heatmap .meta { flex: 2 1 0; font-size: 13px; }
.opid-heatmap dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 10px; margin: 0; }
.opid-heatmap dt { color: #57606a; }
.opid-heatmap dd { margin: 0; }
.opid-heatmap .success { color: #1a7f37; font-weight: 600; }
.opid-heatmap .failure { color: #cf222e; font-weight: 600; }
.opid-heatmap .kind { font-weight: 600; }
.opid-heatmap .skill-label { color: #57606a; margin-top: 6px; }
.opid-heatmap pre { white-space: pre-wrap; word-break: break-word; margin: 2px 0;
  font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.opid-heatmap pre.skill { background: #fff8c5; border-left: 3px solid #d4a72c; padding: 4px 6px; }
.opid-heatmap pre.prompt { background: #f6f8fa; padding: 6px; max-height: 360px; overflow: auto; }
.opid-heatmap mark.skill-block { background: #fff8c5; outline: 1px solid #d4a72c; }
.opid-heatmap summary { cursor: pointer; color: #0969da; font-size: 13px; }
.opid-heatmap .legend { display: flex; align-items: center; gap: 6px; font-size: 12px; color: #57606a; }
.opid-heatmap .legend-bar { display: inline-block; width: 160px; height: 10px;
  border: 1px solid #d0d7de; border-radius: 2px; }
.opid-heatmap .legend-note { margin-left: 12px; }
.opid-heatmap .empty { color: #57606a; margin: 0; }
"""


def _body_html(records: Sequence[Record], title: str, k: int, scale: float | None,
               open_prompts: int = 0) -> str:
    rows = "".join(render_row_html(record, scale, open_prompt=i < open_prompts)
                   for i, record in enumerate(records))
    rows = rows or '<p class="empty">no records</p>'
    return f'<div class="opid-heatmap"><h1>{_escape(title)}</h1>{_summary_html(records, k)}{rows}</div>'


def render_report(records: Sequence[Record], title: str = "Token heatmaps of a skill",
                  scale: float | None = None, k: int = 10, open_prompts: int = 0) -> str:
    """A standalone HTML page: a summary on top, then one heatmap row per record.

    Inline CSS, no script, no external resource: the page renders the same from disk, from a CI
    artifact or offline. ``scale`` is passed to every row (None: each row its own); ``k`` tokens
    are listed per direction; the first ``open_prompts`` rows show their injected prompt unfolded."""
    records = list(records)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_escape(title)}</title><style>{_CSS}body {{ margin: 16px; background: #f6f8fa; }}"
            f"</style></head><body>{_body_html(records, title, k, scale, open_prompts)}</body></html>\n")


def write_report(records: Sequence[Record], path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`render_report` to ``path`` (folders created) and return the path.

    Written to a temporary file then renamed, so a reader never opens a half-written page."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(render_report(records, **kwargs), encoding="utf-8")
    temporary.replace(target)
    return target


def display(records: Sequence[Record] | Record, title: str = "Token heatmaps of a skill",
            scale: float | None = None, k: int = 10) -> Any:
    """The report for a notebook cell: an ``IPython.display.HTML`` if IPython is there, else the
    HTML string. A fragment, not a page, and its CSS is scoped to it, so it leaves the notebook's
    own styles alone. A single record may be passed."""
    rows = [records] if isinstance(records, Mapping) else list(records)
    fragment = f"<style>{_CSS}</style>{_body_html(rows, title, k, scale)}"
    try:
        from IPython.display import HTML
    except ImportError:
        return fragment
    return HTML(fragment)
