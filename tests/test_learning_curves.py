"""The learning-curve harness on a 2-cell matrix with the tiny model: a killed cell resumes from its
checkpoint, a finished one is skipped, and the report reads the results (tests of its statistics
against hand-computed values are at the end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning_curves import parse_matrix  # noqa: E402
from learning_curves_report import by_step, load_unfinished, markdown, permutation_test, steps_to_reach, summarize  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
MAX_STEPS = 2
SMALL = ["environment.train.num_tasks=16", "environment.eval.num_tasks=4", "sft.num_tasks=2", "sft.max_length=256",
         f"training.max_steps={MAX_STEPS}", "training.eval_steps=1", "training.save_steps=1",
         "training.max_completion_length=8", "training.per_device_eval_batch_size=4", "training.max_turns=3"]


def harness(tmp_path: Path, model: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks/learning_curves.py"), "--matrix", "grpo=1,opid=1",
            "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--model", str(model),
            *SMALL]


@pytest.mark.slow
def test_harness_resumes_a_killed_cell_and_skips_finished_ones(tmp_path):
    from opid_trl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    command = harness(tmp_path, model)
    grpo_dir = tmp_path / "work/cells/grpo-seed0"

    # 1. kill the whole harness (train.py included) once the first cell has a complete checkpoint
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(grpo_dir.glob("checkpoint-*/checkpoint_complete.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results/grpo-seed0.json").exists()

    # 2. the rerun resumes that cell and runs the second one
    out = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[grpo-seed0] resuming from checkpoint-" in out.stdout
    assert "[opid-seed0] starting" in out.stdout
    results = {name: json.loads((tmp_path / f"results/{name}.json").read_text()) for name in ("grpo-seed0", "opid-seed0")}
    grpo, opid = results["grpo-seed0"], results["opid-seed0"]
    assert [a["resumed_from"] is not None for a in grpo["attempts"]] == [False, True]
    assert [a["resumed_from"] for a in opid["attempts"]] == [None]
    for cell in results.values():
        # the interrupted run's records were cut back: every step once, in order
        assert [r["step"] for r in cell["train"]] == list(range(1, MAX_STEPS + 1))
        assert [r["step"] for r in cell["eval"]] == [0, 1, 2]
        assert all(0.0 <= r["eval_env/success_rate"] <= 1.0 for r in cell["eval"])
        assert cell["setting"]["resolved_sha256"] == grpo["setting"]["resolved_sha256"]
    assert all("skill/adv_to_outcome_ratio" in r for r in opid["train"])
    assert not any("skill/adv_to_outcome_ratio" in r for r in grpo["train"])  # GRPO computes no skill
    assert all("outcome/zero_adv_group_frac" in r for r in grpo["train"])
    assert not list((tmp_path / "work/cells").glob("*/checkpoint-*"))  # models deleted once a cell is done

    # 3. a third run skips both finished cells and rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")}
    out = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[grpo-seed0] finished" in out.stdout and "[opid-seed0] finished" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # 4. the report reads them
    report = subprocess.run([sys.executable, str(ROOT / "benchmarks/learning_curves_report.py"), "--results",
                             str(tmp_path / "results")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    assert set(summary["methods"]) == {"grpo", "opid"}
    assert (tmp_path / "results/heldout_success.png").stat().st_size > 0


def test_matrix_runs_seed_zero_of_every_method_first():
    assert parse_matrix("grpo=2,opid=2,additive=1") == [("grpo", 0), ("opid", 0), ("additive", 0),
                                                        ("grpo", 1), ("opid", 1)]
    with pytest.raises(SystemExit, match="unknown method"):
        parse_matrix("ppo=1")
    with pytest.raises(SystemExit, match="positive seed count"):
        parse_matrix("grpo=0")


def test_permutation_test_by_hand():
    # 2 vs 2: 6 splits; |mean difference| of the observed split (1.0) is reached by it and its mirror
    p, p_min = permutation_test([1.0, 1.0], [0.0, 0.0])
    assert p == pytest.approx(2 / 6) and p_min == pytest.approx(2 / 6)
    # identical groups: every split is at least as extreme
    assert permutation_test([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[0] == pytest.approx(1.0)
    assert permutation_test([1.0, 0.9, 0.8], [0.1, 0.2, 0.3])[1] == pytest.approx(0.1)


def _cell(method, seed, evals, train=()):
    return {"method": method, "seed": seed, "commit": "c", "wall_seconds": 1.0,
            "eval": [{"step": s, "eval_env/success_rate": v} for s, v in evals],
            "train": [{"step": s, "step_time": 2.0, **r} for s, r in train]}


def test_steps_to_reach_and_summary_by_hand():
    cells = {
        "grpo": [_cell("grpo", 0, [(0, 0.2), (10, 0.4)]), _cell("grpo", 1, [(0, 0.2), (10, 0.6)])],
        "opid": [_cell("opid", 0, [(0, 0.2), (5, 0.5), (10, 0.7)],
                       [(1, {"skill/adv_to_outcome_ratio": 0.01, "skill_signal/auc_skill": 0.6}),
                        (2, {"skill/adv_to_outcome_ratio": 0.03, "skill_signal/auc_skill": 0.8})]),
                 _cell("opid", 1, [(0, 0.2), (10, 0.3)])],
    }
    assert steps_to_reach(cells["opid"][0], 0.5) == 5
    assert steps_to_reach(cells["opid"][1], 0.5) is None
    summary = summarize(cells)
    assert summary["grpo_final_success"] == pytest.approx(0.5)
    opid = summary["methods"]["opid"]
    assert opid["final_success_mean"] == pytest.approx(0.5)
    assert opid["steps_to_grpo_final"] == [5, None]
    assert opid["vs_grpo"]["difference"] == pytest.approx(0.0)
    assert opid["mechanism"]["skill_to_outcome_ratio"] == pytest.approx(0.02)
    assert opid["start_success"] == pytest.approx(0.2)
    assert opid["skill_signal"]["auc_skill"] == pytest.approx(0.7)
    table = markdown(summary)
    assert "| opid | 0.70 | - | - | - | - | - |" in table and "| grpo | " not in table.split("Skill signal")[1]


def test_a_warm_start_of_another_setting_is_refused(tmp_path):
    from learning_curves import Matrix

    from opid_trl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    config = ROOT / "configs/benchmarks/learning_curves_fetch.yaml"
    sft = tmp_path / "work/sft"
    sft.mkdir(parents=True)
    (sft / "config.json").write_text("{}")
    (sft / "warm_start.json").write_text(json.dumps({"sft": {"num_tasks": 1}}))
    with pytest.raises(SystemExit, match="warm-started for another setting"):
        Matrix(config, tmp_path / "work", tmp_path / "results", [], str(model)).warm_start()


def test_unfinished_cells_are_shown_apart(tmp_path):
    finished = {"grpo": [_cell("grpo", 0, [(0, 0.25), (10, 0.5)])]}
    running = tmp_path / "cells/opid-seed0"
    running.mkdir(parents=True)
    records = [{"step": 0, "eval_env/success_rate": 0.25}, {"step": 1, "loss": 0.1, "env/success_rate": 0.5},
               {"step": 1, "eval_env/success_rate": 0.75}]
    (running / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = tmp_path / "cells/grpo-seed0"  # finished: its result exists, so it is not listed again
    done.mkdir()
    (done / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    unfinished = load_unfinished(tmp_path, finished)
    assert list(unfinished) == ["opid-seed0"]
    table = by_step(finished, unfinished)
    assert "| step | grpo (n=1) | opid-seed0 (unfinished, step 1) |" in table
    assert "| 0 | 0.250 | 0.250 |" in table and "| 1 | - | 0.750 |" in table and "| 10 | 0.500 | - |" in table
    assert "opid" not in summarize(finished)["methods"]


def test_a_cell_trained_to_the_end_is_collected_without_training_again(tmp_path, monkeypatch):
    """The harness stopped after train.py finished: resuming would train one step more, so the
    cell is collected as it is, and no record past max_steps enters its result."""
    import types

    import learning_curves

    import opid_trl.checkpoints
    from opid_trl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    matrix = learning_curves.Matrix(ROOT / "configs/benchmarks/learning_curves_fetch.yaml", tmp_path / "work",
                                    tmp_path / "results", ["training.max_steps=2"], str(model))
    cell = matrix.cell_dir("grpo", 0)
    (cell / "checkpoint-2").mkdir(parents=True)
    (cell / "checkpoint-2/trainer_state.json").write_text(json.dumps({"global_step": 2}))
    records = [{"step": 0, "eval_env/success_rate": 0.5}, {"step": 1, "loss": 0.1, "env/success_rate": 0.5},
               {"step": 2, "loss": 0.1, "env/success_rate": 1.0}, {"step": 2, "eval_env/success_rate": 0.75},
               {"step": 3, "loss": 0.1, "env/success_rate": 1.0}, {"step": 3, "eval_env/success_rate": 1.0}]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(opid_trl.checkpoints, "find_resume_checkpoint",
                        lambda folder, *a: types.SimpleNamespace(checkpoint=str(cell / "checkpoint-2"), skipped=[]))
    run = learning_curves.subprocess.run

    def no_training(command, *args, **kwargs):
        assert not any("train.py" in str(part) for part in command), "train.py was started"
        return run(command, *args, **kwargs)

    monkeypatch.setattr(learning_curves.subprocess, "run", no_training)
    result = matrix.run_cell("grpo", 0, str(model), keep_models=False)
    assert [r["step"] for r in result["train"]] == [1, 2]
    assert [(r["step"], r["eval_env/success_rate"]) for r in result["eval"]] == [(0, 0.5), (2, 0.75)]
    assert not (cell / "checkpoint-2").exists()
