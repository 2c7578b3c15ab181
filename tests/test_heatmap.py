"""Token heatmaps of a skill: numbers, colours, escaping, reading records, and a real browser."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from opid_trl.algorithms.routing import EPISODE_SKILL_TITLE, inject_episode_skill
from opid_trl.reporting import heatmap
from tests import browser

TASK = "Your task is to: take the apple."
PROMPT = f"You are in a room.\n{TASK}\nYou see a table.\nNow it's your turn to act."
SKILL = "Walk east until the apple is here, then take it."


def make_record(tokens, l_old, l_skill, **overrides):
    """A record in the trainer's format, with a real episode-skill injection."""
    record = {
        "global_step": 3, "trajectory_id": "traj-0", "step_index": 1, "kind": "episode", "skill": SKILL,
        "prompt": PROMPT, "skill_prompt": inject_episode_skill(PROMPT, SKILL, TASK),
        "tokens": tokens, "l_old": l_old, "l_skill": l_skill, "coef": 1e-3, "outcome_advantage": 0.5,
        "episode_return": 1.0, "success": True, "task_type": "fetch",
    }
    record.update(overrides)
    return record


class TokenSpans(HTMLParser):
    """The token spans of a page: (style, title, visible text), nested marker spans included."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, str]] = []
        self._depth = 0  # > 0 while inside a token span

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._depth:
            self._depth += tag == "span"
            self.spans[-1]["text"] += "\n" if tag == "br" else ""
        elif tag == "span" and "tok" in (attrs.get("class") or "").split() and attrs.get("title"):
            self.spans.append({"style": attrs.get("style", ""), "title": attrs["title"], "text": ""})
            self._depth = 1

    def handle_endtag(self, tag):
        if self._depth and tag == "span":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.spans[-1]["text"] += data


def spans_of(page: str) -> list[dict[str, str]]:
    parser = TokenSpans()
    parser.feed(page)
    return parser.spans


def rgb_of(style: str) -> tuple[int, int, int]:
    inner = style.split("rgb(", 1)[1].split(")", 1)[0]
    return tuple(int(x) for x in inner.split(","))


def test_token_advantages_are_skill_minus_old_cut_to_the_shortest_field():
    record = make_record(["a", "b", "c"], [-1.0, -2.0, -3.0], [-0.5, -2.5])
    assert heatmap.token_advantages(record) == pytest.approx([0.5, -0.5])


def test_promoted_and_suppressed_tokens_get_the_two_colours_and_their_numbers():
    record = make_record(["<take>", " apple", "</take>"], [-2.0, -1.0, -0.7], [-0.5, -3.0, -0.7])
    spans = spans_of(heatmap.render_row_html(record))
    assert [s["text"] for s in spans] == ["<take>", " apple", "</take>"]
    promoted, suppressed, neutral = spans
    r, g, b = rgb_of(promoted["style"])
    assert r > b and g < 255  # red side
    assert promoted["title"] == "l_old=-2.0000, l_skill=-0.5000, A_skill=+1.5000"
    r, g, b = rgb_of(suppressed["style"])
    assert b > r  # blue side
    assert suppressed["title"] == "l_old=-1.0000, l_skill=-3.0000, A_skill=-2.0000"
    assert rgb_of(neutral["style"]) == (255, 255, 255)
    # the default scale is the row's max |A|: the most suppressed token is fully saturated
    assert rgb_of(suppressed["style"]) == heatmap.NEGATIVE_RGB


def test_the_scale_is_symmetric_and_clipped():
    assert heatmap.token_colour(0.0, 1.0) == (255, 255, 255)
    assert heatmap.token_colour(2.0, 1.0) == heatmap.POSITIVE_RGB
    assert heatmap.token_colour(-5.0, 1.0) == heatmap.NEGATIVE_RGB
    half_up, half_down = heatmap.token_colour(0.5, 1.0), heatmap.token_colour(-0.5, 1.0)
    assert 255 - min(half_up) == pytest.approx((255 - min(heatmap.POSITIVE_RGB)) / 2, abs=1)
    assert 255 - min(half_down) == pytest.approx((255 - min(heatmap.NEGATIVE_RGB)) / 2, abs=1)
    assert heatmap.token_colour(math.nan, 1.0) == heatmap.INVALID_RGB
    # an explicit scale: the same token is half saturated under twice its value
    record = make_record(["x"], [-1.0], [0.0])
    (span,) = spans_of(heatmap.render_row_html(record, scale=2.0))
    assert rgb_of(span["style"]) == heatmap.token_colour(0.5, 1.0)
    assert "+2.0000" in heatmap.render_row_html(record, scale=2.0)  # the legend states the scale


def test_small_values_keep_their_digits_in_the_title():
    record = make_record(["x"], [-1.0], [-1.0 + 2.5e-5])
    (span,) = spans_of(heatmap.render_row_html(record))
    assert "A_skill=+2.500e-05" in span["title"]


def test_model_text_is_escaped_and_no_script_tag_reaches_the_page():
    payload = "<script>alert(1)</script>"
    record = make_record(["<script>", "alert(1)", "</script>", '" onmouseover="x'], [-1.0] * 4, [-0.5] * 4,
                         skill=payload, prompt=f"{TASK}\n{payload}", task_type=payload,
                         trajectory_id=payload, skill_prompt=f"{TASK}\n{payload}\n{payload}")
    page = heatmap.render_report([record], title=payload)
    assert "&lt;script&gt;" in page
    assert "<script" not in page.lower()
    assert 'onmouseover="x' not in page
    tags = [s["text"] for s in spans_of(page) if s["text"] in ("<script>", "</script>")]
    assert tags == ["<script>", "</script>"]


def test_control_characters_are_shown_not_emitted():
    row = heatmap.render_row_html(make_record(["a\x00b\x1b"], [-1.0], [-1.0]))
    assert "\x00" not in row and "\x1b" not in row
    assert "a\\x00b\\x1b" in row


def test_whitespace_tokens_are_visible():
    record = make_record(["go", "\n", "  ", "\t", "", "east"], [-1.0] * 6, [-0.9] * 6)
    row = heatmap.render_row_html(record)
    texts = [s["text"] for s in spans_of(row)]
    assert texts[1] == "\u21b5\n"  # a faint return marker, then a real line break
    assert texts[2] == "··"
    assert texts[3] == "\u21e5\t"
    assert texts[4] == "\u2205"
    assert "<br>" in row


def test_the_row_shows_skill_kind_outcome_and_the_marked_injection():
    record = make_record(["a"], [-1.0], [-0.5], kind="step", success=False, episode_return=0.25,
                         outcome_advantage=-0.75, coef=0.002)
    row = heatmap.render_row_html(record)
    assert SKILL in row
    assert '<span class="kind">step</span>' in row
    assert "failure" in row and "0.2500" in row and "-0.7500" in row and "0.0020" in row
    assert row.count("<details>") == 2  # the injected prompt and the original one, folded
    marked = row.split('<mark class="skill-block">', 1)[1].split("</mark>", 1)[0]
    assert EPISODE_SKILL_TITLE.replace("(", "") in marked.replace("(", "") and SKILL in marked
    assert TASK not in marked  # only the inserted block is highlighted


def test_the_injection_is_found_from_the_skill_text_without_the_original_prompt():
    record = make_record(["a"], [-1.0], [-0.5], prompt="")
    marked = heatmap.render_row_html(record).split('<mark class="skill-block">', 1)[1].split("</mark>")[0]
    assert marked == SKILL


def test_non_finite_values_render_grey_and_are_not_counted():
    record = make_record(["a", "b"], [-1.0, None], [0.0, -1.0])
    spans = spans_of(heatmap.render_row_html(record))
    assert rgb_of(spans[1]["style"]) == heatmap.INVALID_RGB
    assert heatmap.token_stats([record]) == {"a": (1.0, 1)}


def test_top_tokens_on_hand_computed_values():
    records = [
        make_record(["a", "b", "d"], [-2.0, -1.0, -1.0], [-1.0, -2.0, -3.0]),   # a +1, b -1, d -2
        make_record(["a", "c", "d"], [-4.0, -1.0, -1.0], [-1.0, -0.5, -5.0]),   # a +3, c +0.5, d -4
        make_record(["e"], [-1.0], [-1.0]),                                     # e 0: neither list
    ]
    promoted, suppressed = heatmap.top_tokens(records)
    assert promoted == [("a", pytest.approx(2.0)), ("c", pytest.approx(0.5))]
    assert suppressed == [("d", pytest.approx(-3.0)), ("b", pytest.approx(-1.0))]
    assert heatmap.top_tokens(records, k=1) == ([("a", pytest.approx(2.0))], [("d", pytest.approx(-3.0))])
    frequent = heatmap.top_tokens(records, min_count=2)
    assert frequent == ([("a", pytest.approx(2.0))], [("d", pytest.approx(-3.0))])
    assert heatmap.token_stats(records)["a"] == (pytest.approx(2.0), 2)


def test_the_report_summary_counts_rows_and_names_the_extreme_tokens():
    records = [make_record(["up", "down"], [-2.0, -1.0], [-1.0, -2.0]),
               make_record(["up"], [-2.0], [-1.0], kind="step")]
    page = heatmap.render_report(records, title="demo")
    summary = page.split('<section class="summary">', 1)[1].split("</section>", 1)[0]
    assert "<b>2</b> rows (episode 1, step 1), <b>3</b> tokens" in summary
    assert "mean A_skill <b>+0.3333</b>" in summary
    promoted, suppressed = summary.split("Most suppressed tokens")
    assert ">up<" in promoted and ">down<" in suppressed
    assert page.count('<section class="row">') == 2
    assert page.startswith("<!DOCTYPE html>") and "<title>demo</title>" in page
    assert "http://" not in page and "https://" not in page  # no external resource


def write_jsonl(path: Path, records, torn: str | None = None) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + (torn or ""))
    return path


def test_load_records_reads_a_folder_by_step_then_rank(tmp_path):
    folder = tmp_path / "heatmaps"
    folder.mkdir()
    for step, rank in ((10, 0), (2, 1), (2, 0)):
        write_jsonl(folder / f"step-{step}-rank{rank}.jsonl",
                    [make_record(["t"], [-1.0], [-0.5], global_step=step, trajectory_id=f"r{rank}")])
    write_jsonl(folder / "notes.jsonl", [make_record(["x"], [-1.0], [-1.0], global_step=99)])
    (folder / "step-2-rank0.html").write_text("<html></html>")
    records = heatmap.load_records(folder)
    assert [(r["global_step"], r["trajectory_id"]) for r in records] == [(2, "r0"), (2, "r1"), (10, "r0")]
    assert heatmap.load_records(tmp_path) == []  # no step files there


def test_load_records_skips_a_torn_last_line(tmp_path, caplog):
    records = [make_record(["a"], [-1.0], [-0.5]), make_record(["b"], [-1.0], [-1.5])]
    path = write_jsonl(tmp_path / "step-1-rank0.jsonl", records, torn=json.dumps(records[0])[:40])
    with caplog.at_level(logging.WARNING, logger="opid_trl.reporting.heatmap"):
        loaded = heatmap.load_records(path)
    assert [r["tokens"] for r in loaded] == [["a"], ["b"]]
    assert "torn last line" in caplog.text
    assert heatmap.load_records(tmp_path)[1]["tokens"] == ["b"]
    with pytest.raises(FileNotFoundError):
        heatmap.load_records(tmp_path / "missing.jsonl")


def test_write_report_and_display(tmp_path, monkeypatch):
    records = [make_record(["a"], [-1.0], [-0.5])]
    path = heatmap.write_report(records, tmp_path / "deep" / "report.html")
    assert path == tmp_path / "deep" / "report.html"
    assert path.read_text() == heatmap.render_report(records)
    assert not list(path.parent.glob("*.tmp"))
    shown = heatmap.display(records)
    pytest.importorskip("IPython")
    assert "opid-heatmap" in shown.data and "<html" not in shown.data
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as if IPython were not installed
    fragment = heatmap.display(records[0])
    assert isinstance(fragment, str) and 'class="tok' in fragment


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.browser
def test_the_report_loads_in_headless_chromium_without_console_errors(tmp_path):
    if browser.chromium_binary() is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # model text that would log a console error if it ever ran as a script
    payload = '<script>console.error("model text ran")</script><img src=x onerror="console.error(1)">'
    records = [make_record(["<take>", " apple", payload, "\n", "</take>"], [-2.0, -1.0, -1.0, -0.3, -0.2],
                           [-0.5, -3.0, -1.2, -0.3, -0.1], skill=payload),
               make_record(["go", " east"], [-1.0, -2.0], [-0.2, -2.5], kind="step")]
    report = heatmap.write_report(records, tmp_path / "report.html")
    png = tmp_path / "report.png"
    done = browser.take_screenshot(report, png)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 10_000
    assert png_size(png) == (1280, 900)
    assert browser.console_errors(done.stderr) == []
    image = pytest.importorskip("PIL.Image").open(png).convert("RGB")
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 20  # text and colours, not a blank page


@pytest.mark.browser
def test_the_console_check_sees_a_page_that_logs_an_error(tmp_path):
    """Positive control of the browser test above: a page whose script does log a console error is
    caught, so "no console errors" there means the report ran no script, not that Chromium logged
    nothing."""
    if browser.chromium_binary() is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    page = tmp_path / "bad.html"
    page.write_text('<html><body><p>x</p><script>console.error("control error")</script></body></html>')
    done = browser.take_screenshot(page, tmp_path / "bad.png")
    assert done.returncode == 0, done.stderr[-2000:]
    assert any("control error" in line for line in browser.console_errors(done.stderr))


def test_a_screenshot_can_unfold_the_first_prompts_and_rows_show_the_weighted_term():
    records = [make_record(["a"], [-1.0], [-0.5]), make_record(["b"], [-1.0], [-1.5])]
    page = heatmap.render_report(records, open_prompts=1)
    assert page.count("<details open>") == 1 and page.count("<details>") == 3
    assert "up to &plusmn;5.000e-04 added to A_ep" in heatmap.render_row_html(records[0])  # 1e-3 * 0.5


def test_the_recorder_writes_what_the_heatmap_reads(tmp_path):
    torch = pytest.importorskip("torch")
    from opid_trl.reporting.heatmap_recorder import HeatmapRecorder

    recorder = HeatmapRecorder(tmp_path, rank=0, rows_per_step=1)
    base = make_record(["go", " east", "pad"], [], [])
    described = {k: v for k, v in base.items() if k not in ("kind", "skill", "skill_prompt", "coef", "l_old",
                                                             "l_skill")}
    described.update(episode_skill=SKILL, episode_skill_prompt=base["skill_prompt"], episode_coef=1e-3)
    mask = torch.tensor([[1, 1, 0]])
    recorder.stash([0], lambda row: dict(described), {"episode": torch.tensor([[-0.5, -2.0, 0.0]])}, mask)
    recorder.complete([0], torch.tensor([[-1.0, -1.0, 0.0]]))
    # the loss step only appends the record: the report is rendered once per optimizer step
    assert not (tmp_path / "heatmaps" / "step-3-rank0.html").exists()
    recorder.render()
    (record,) = heatmap.load_records(tmp_path / "heatmaps")
    assert record["kind"] == "episode" and record["tokens"] == ["go", " east"]
    assert heatmap.token_advantages(record) == pytest.approx([0.5, -1.0])
    assert (tmp_path / "heatmaps" / "step-3-rank0.html").read_text() == heatmap.render_report([record])


@pytest.mark.browser
def test_the_screenshot_script_renders_records(tmp_path):
    if browser.chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    import subprocess

    records = [make_record(["go", " east"], [-1.0, -2.0], [-0.2, -2.5])]
    source = write_jsonl(tmp_path / "step-1-rank0.jsonl", records)
    png = tmp_path / "shot.png"
    script = Path(__file__).resolve().parent.parent / "docs" / "render_heatmap_screenshot.py"
    done = subprocess.run([sys.executable, str(script), str(source), str(png), "--open-prompts", "1",
                           "--report", str(tmp_path / "kept.html")],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png_size(png) == (1280, 900)
    assert "<details open>" in (tmp_path / "kept.html").read_text()
