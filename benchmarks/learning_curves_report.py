"""Read-outs of the learning-curve matrix, in the paper's layout, from the cells that have finished.

    python benchmarks/learning_curves_report.py
    python benchmarks/learning_curves_report.py --results benchmarks/results/learning_curves --benchmarks BENCHMARKS.md

Writes ``summary.json``, ``summary.md`` and two PNGs (held-out and training success against the
optimizer step: mean over seeds, band min-max) into the results folder, and, with
``--benchmarks``, replaces the part of that file between the learning-curve markers by
``summary.md``, so that the document quotes only what this script computed.

Per method: final held-out success (the evaluation at the last step; mean, std over seeds),
the steps each seed needs to reach GRPO's final mean success, final success per task type, mean
episode length and invalid-action rate at the end, median step time, and the mechanism: the share
of groups whose outcome advantage is zero (all won or all lost), the share of zero-outcome rows in
which the skill advantage carries a signal, and |lambda A_skill| against |A_ep|. Against GRPO:
the difference of means, an exact two-sided permutation test over seeds (its smallest possible
p-value is printed with it: with 3 seeds against 3 it is 0.1) and Welch's t-test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHOD_ORDER = ("grpo", "opid", "episode_only", "step_only", "additive")
START, END = "<!-- learning-curves:start -->", "<!-- learning-curves:end -->"
SUCCESS = "eval_env/success_rate"
MECHANISM = {
    "uniform_return_groups": "outcome/uniform_return_group_frac",
    "zero_adv_groups": "outcome/zero_adv_group_frac",
    "zero_outcome_rows_with_skill_signal": "skill/zero_outcome_rows_with_signal",
    "skill_to_outcome_ratio": "skill/adv_to_outcome_ratio",
    "skill_adv_abs_max": "skill/adv_abs_max",
}
#: The skill-signal diagnostic per training batch (cells run with `skill_signal_diagnostics`):
#: AUC of each score for the expert's good steps above its bad ones, and the skill share used.
SKILL_SIGNAL = {
    "auc_skill": "skill_signal/auc_skill",
    "auc_skill_action": "skill_signal/auc_skill_action",
    "auc_skill_decision": "skill_signal/auc_skill_decision",
    "auc_outcome": "skill_signal/auc_outcome",
    "auc_opid": "skill_signal/auc_opid",
    "share": "skill_signal/share",
}


def load_cells(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished cells by method, each method's cells in seed order."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*-seed*.json")):
        cell = json.loads(path.read_text())
        cells.setdefault(cell["method"], []).append(cell)
    for method in cells:
        cells[method].sort(key=lambda c: c["seed"])
    return dict(sorted(cells.items(), key=lambda kv: METHOD_ORDER.index(kv[0]) if kv[0] in METHOD_ORDER else 99))


def load_unfinished(work_dir: Path, finished: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The cells of a work folder that have no result yet, as far as they got (cell name -> cell).

    Shown apart (curve and per-step table only): an unfinished cell never enters a mean, a test
    or the main table."""
    from learning_curves import split_records  # puts the repository on sys.path for opid_trl

    from opid_trl.reporting.metrics_log import read_metrics

    done = {(c["method"], c["seed"]) for runs in finished.values() for c in runs}
    unfinished = {}
    for metrics in sorted((work_dir / "cells").glob("*-seed*/metrics.jsonl")):
        method, _, seed = metrics.parent.name.rpartition("-seed")
        if (method, int(seed)) in done:
            continue
        train, evals = split_records(read_metrics(metrics))
        if evals:
            unfinished[metrics.parent.name] = {"method": method, "seed": int(seed), "train": train, "eval": evals}
    return unfinished


def by_step(cells: dict[str, list[dict[str, Any]]], unfinished: dict[str, dict[str, Any]]) -> str:
    """Held-out success at every evaluated step: per method the mean over its finished seeds, then
    each unfinished cell on its own."""
    columns = {f"{m} (n={len(runs)})": runs for m, runs in cells.items()}
    columns.update({f"{name} (unfinished, step {c['train'][-1]['step'] if c['train'] else 0})": [c]
                    for name, c in unfinished.items()})
    steps = sorted({int(r["step"]) for runs in columns.values() for c in runs for r in c["eval"]})
    lines = ["| step | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for step in steps:
        row = []
        for runs in columns.values():
            values = [r[SUCCESS] for c in runs for r in c["eval"] if int(r["step"]) == step]
            row.append(_fmt(statistics.fmean(values)) + (f" ({len(values)})" if 0 < len(values) < len(runs) else "")
                       if values else "-")
        lines.append(f"| {step} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std of the values that are numbers (a cell may lack a metric: NaN)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def permutation_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Exact two-sided permutation test of mean(a) - mean(b); returns (p, smallest possible p)."""
    pooled, n = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    splits = list(itertools.combinations(range(len(pooled)), n))
    extreme = 0
    for chosen in splits:
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        extreme += abs(statistics.fmean(first) - statistics.fmean(second)) >= observed - 1e-12
    # the smallest p: only the observed split and its mirror image are as extreme
    return extreme / len(splits), (2 if len(a) == len(b) else 1) / len(splits)


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    try:
        from scipy import stats
    except ImportError:
        return None
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def final_eval(cell: dict[str, Any]) -> dict[str, float]:
    return cell["eval"][-1] if cell["eval"] else {}


def _train_success(records: list[dict[str, Any]]) -> float:
    values = [r["env/success_rate"] for r in records if "env/success_rate" in r]
    return statistics.fmean(values) if values else math.nan


def steps_to_reach(cell: dict[str, Any], target: float) -> int | None:
    """The first evaluated step at which held-out success reaches ``target`` (None: never)."""
    for record in cell["eval"]:
        if record.get(SUCCESS, -1.0) >= target - 1e-9:
            return int(record["step"])
    return None


def summarize(cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    grpo_final = [final_eval(c).get(SUCCESS, math.nan) for c in cells.get("grpo", [])]
    target = statistics.fmean(grpo_final) if grpo_final else None
    summary: dict[str, Any] = {"grpo_final_success": target, "methods": {}}
    for method, runs in cells.items():
        finals = [final_eval(c).get(SUCCESS, math.nan) for c in runs]
        start = [c["eval"][0].get(SUCCESS, math.nan) for c in runs if c["eval"] and c["eval"][0]["step"] == 0]
        types = sorted({k[len(SUCCESS) + 1:] for c in runs for k in final_eval(c) if k.startswith(SUCCESS + "/")})
        entry: dict[str, Any] = {
            "seeds": [c["seed"] for c in runs],
            "steps": [int(c["train"][-1]["step"]) if c["train"] else 0 for c in runs],
            "start_success": mean_std(start)[0] if start else None,
            "final_success": finals,
            "final_success_mean": mean_std(finals)[0], "final_success_std": mean_std(finals)[1],
            "per_type": {t: mean_std([final_eval(c).get(f"{SUCCESS}/{t}", math.nan) for c in runs])[0]
                         for t in types},
            "episode_length": mean_std([final_eval(c).get("eval_env/episode_length", math.nan) for c in runs])[0],
            "invalid_action_rate": mean_std([final_eval(c).get("eval_env/invalid_action_rate", math.nan)
                                             for c in runs])[0],
            "train_success_first_10": mean_std([_train_success(c["train"][:10]) for c in runs])[0],
            "train_success_last_10": mean_std([_train_success(c["train"][-10:]) for c in runs])[0],
            "median_step_seconds": statistics.median([r["step_time"] for c in runs for r in c["train"]
                                                      if "step_time" in r] or [math.nan]),
            "wall_seconds": [c["wall_seconds"] for c in runs],
            "steps_to_grpo_final": [steps_to_reach(c, target) for c in runs] if target is not None else None,
            "mechanism": {name: statistics.fmean([r[key] for c in runs for r in c["train"] if key in r] or [math.nan])
                          for name, key in MECHANISM.items()},
            "skill_signal": {name: statistics.fmean([r[key] for c in runs for r in c["train"] if key in r] or [math.nan])
                             for name, key in SKILL_SIGNAL.items()},
            "commits": sorted({c["commit"] for c in runs}),
        }
        if method != "grpo" and grpo_final:
            p, p_min = permutation_test(finals, grpo_final)
            entry["vs_grpo"] = {"difference": entry["final_success_mean"] - target, "permutation_p": p,
                                "permutation_p_min": p_min, "welch_p": welch_p(finals, grpo_final)}
        summary["methods"][method] = entry
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _sci(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1e}"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| method | seeds | steps | held-out success: start | final (mean ± std) | vs GRPO (perm. p / min p; "
             "Welch p) | steps to GRPO's final | training success: first 10 / last 10 steps | episode length | invalid actions | all-won/all-lost groups | "
             "zero-adv groups | "
             "zero-outcome rows with skill signal | abs(lambda A_skill) / abs(A_ep) | median step (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, e in summary["methods"].items():
        std = f" ± {e['final_success_std']:.3f}" if e["final_success_std"] is not None else ""
        vs = e.get("vs_grpo")
        versus = "-" if not vs else (f"{vs['difference']:+.3f} ({_fmt(vs['permutation_p'], 2)} / "
                                     f"{_fmt(vs['permutation_p_min'], 2)}; {_fmt(vs['welch_p'], 2)})")
        reach = e["steps_to_grpo_final"]
        reached = "-" if reach is None else ", ".join("never" if s is None else str(s) for s in reach)
        m = e["mechanism"]
        lines.append(
            f"| {method} | {len(e['seeds'])} | {','.join(map(str, e['steps']))} | {_fmt(e['start_success'])} | "
            f"{_fmt(e['final_success_mean'])}{std} | {versus} | {reached} | "
            f"{_fmt(e['train_success_first_10'], 2)} / {_fmt(e['train_success_last_10'], 2)} | {_fmt(e['episode_length'], 2)} | "
            f"{_fmt(e['invalid_action_rate'])} | {_fmt(m['uniform_return_groups'], 2)} | "
            f"{_fmt(m['zero_adv_groups'], 2)} | "
            f"{_fmt(m['zero_outcome_rows_with_skill_signal'], 2)} | {_sci(m['skill_to_outcome_ratio'])} | "
            f"{_fmt(e['median_step_seconds'], 1)} |")
    types = sorted({t for e in summary["methods"].values() for t in e["per_type"]})
    if types:
        lines += ["", "Final held-out success per task type (mean over seeds):", "",
                  "| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for method, e in summary["methods"].items():
            lines.append(f"| {method} | " + " | ".join(_fmt(e["per_type"].get(t)) for t in types) + " |")
    signal = {m: e["skill_signal"] for m, e in summary["methods"].items()
              if any(not math.isnan(v) for v in e.get("skill_signal", {}).values())}
    if signal:
        lines += ["", "Skill signal against the expert (mean over training batches; AUC of good above bad steps):", "",
                  "| method | A_skill | A_skill (action tokens) | A_skill (decision tokens) | A_ep | A_OPID "
                  "| abs(lambda A_skill) / abs(A_ep) used |", "|---|---|---|---|---|---|---|"]
        for method, v in signal.items():
            lines.append(f"| {method} | {_fmt(v['auc_skill'], 2)} | {_fmt(v['auc_skill_action'], 2)} | "
                         f"{_fmt(v['auc_skill_decision'], 2)} | "
                         f"{_fmt(v['auc_outcome'], 2)} | {_fmt(v['auc_opid'], 2)} | {_sci(v['share'])} |")
    return "\n".join(lines) + "\n"


def plot(cells: dict[str, list[dict[str, Any]]], key: str, records: str, path: Path, title: str,
         unfinished: dict[str, dict[str, Any]] | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for method, runs in cells.items():
        curves = [{int(r["step"]): r[key] for r in c[records] if key in r} for c in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]
        mean = [statistics.fmean(v) for v in values]
        (line,) = ax.plot(steps, mean, marker="o" if records == "eval" else None, label=f"{method} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15,
                            color=line.get_color())
        drawn = True
    for name, cell in (unfinished or {}).items():
        points = [(int(r["step"]), r[key]) for r in cell[records] if key in r]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="--",
                    marker="o" if records == "eval" else None, label=f"{name} (unfinished)")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def update_document(document: Path, table: str) -> None:
    text = document.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{document}: no {START} ... {END} section to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    document.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/learning_curves")
    parser.add_argument("--benchmarks", type=Path, help="a document with the learning-curve markers to fill")
    parser.add_argument("--unfinished", type=Path, metavar="WORK_DIR",
                        help="also show the cells of this work folder that have not finished (dashed, apart)")
    args = parser.parse_args(argv)
    cells = load_cells(args.results)
    if not cells:
        print(f"no finished cell in {args.results}", file=sys.stderr)
        return 1
    unfinished = load_unfinished(args.unfinished, cells) if args.unfinished else {}
    summary = summarize(cells)
    summary["unfinished"] = {name: {"steps": c["train"][-1]["step"] if c["train"] else 0, "eval": c["eval"]}
                             for name, c in unfinished.items()}
    table = markdown(summary) + "\nHeld-out success at each evaluated step:\n\n" + by_step(cells, unfinished)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (args.results / "summary.md").write_text(table)
    written = [p for p in (
        plot(cells, SUCCESS, "eval", args.results / "heldout_success.png", "held-out success (temperature 0.4)",
             unfinished),
        plot(cells, "env/success_rate", "train", args.results / "train_success.png",
             "training success (sampled episodes, temperature 1.0)", unfinished),
    ) if p is not None]
    if args.benchmarks is not None:
        update_document(args.benchmarks, table)
    print(table)
    print("written:", ", ".join(str(p) for p in [args.results / "summary.json", args.results / "summary.md", *written]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
