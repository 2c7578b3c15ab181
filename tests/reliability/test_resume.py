"""Resume after a crash: torn checkpoints, torn JSONL lines, replayed audit steps, and a real kill -9.

Every fault is injected on the tiny CPU model with the `fetch` environment: the state a killed
process leaves behind is rebuilt from the files of an uninterrupted run, and the resumed run must
end where the uninterrupted one did.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train
from opid_trl.checkpoints import (
    COMPLETE_MARKER,
    INCOMPLETE_DIR,
    CheckpointCompletionCallback,
    checkpoint_problem,
    find_resume_checkpoint,
)
from tests.reliability.test_output_dir import ReachedTraining, snapshot, stop_before_training
from tests.test_train_cli import ROOT, tiny_run_file

AUDIT = Path("analysis") / "analyses-rank0.jsonl"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def audit_keys(run_dir: Path) -> Counter:
    return Counter((r["global_step"], r["trajectory_id"]) for r in jsonl(run_dir / AUDIT))


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4 (its output directory)."""
    root = tmp_path_factory.mktemp("full")
    assert train.main(["--config", str(tiny_run_file(root, tiny_model_dir, max_steps=4))]) == 0
    return root / "run"


def copy_checkpoints(full_run: Path, target: Path, *steps: int) -> Path:
    target.mkdir(parents=True)
    for step in steps:
        shutil.copytree(full_run / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# How a write can be cut: (files removed, file truncated, expected reason). Without the marker the
# folder is judged by the trainer's write order and the files' own framing; with it, by the sizes
# it lists.
TEARS = {
    "killed before the trainer state": ([COMPLETE_MARKER, "trainer_state.json"], None, "trainer_state.json"),
    "killed while writing the optimizer": ([COMPLETE_MARKER, "trainer_state.json"], "optimizer.pt",
                                           "trainer_state.json"),
    "trainer state cut short": ([COMPLETE_MARKER], "trainer_state.json", "trainer_state.json"),
    "weights cut short, no marker": ([COMPLETE_MARKER], "model.safetensors", "model.safetensors"),
    "optimizer cut short, no marker": ([COMPLETE_MARKER], "optimizer.pt", "optimizer.pt"),
    "optimizer missing, no marker": ([COMPLETE_MARKER, "optimizer.pt"], None, "optimizer"),
    "optimizer missing under its marker": (["optimizer.pt"], None, "optimizer.pt is missing"),
    "weights cut short under its marker": ([], "model.safetensors", "model.safetensors is"),
}


def tear(folder: Path, removed: list[str], truncated: str | None) -> None:
    for name in removed:
        (folder / name).unlink()
    if truncated:
        truncate(folder / truncated)


def test_checkpoints_are_marked_complete(full_run):
    for step in (2, 4):
        folder = full_run / f"checkpoint-{step}"
        listed = json.loads((folder / COMPLETE_MARKER).read_text())
        assert listed["global_step"] == step
        assert {"trainer_state.json", "optimizer.pt", "model.safetensors", "rng_state.pth"} <= set(listed["files"])
        assert checkpoint_problem(folder) is None


def test_a_checkpoint_without_marker_is_judged_by_its_files(full_run, tmp_path):
    """Checkpoints of older runs have no marker: intact ones are still resumed from."""
    folder = copy_checkpoints(full_run, tmp_path / "run", 2) / "checkpoint-2"
    (folder / COMPLETE_MARKER).unlink()
    assert checkpoint_problem(folder) is None
    (folder / "optimizer.pt").unlink()
    assert checkpoint_problem(folder, expect_optimizer=False) is None  # save_only_model


@pytest.mark.parametrize("name", list(TEARS))
def test_a_torn_checkpoint_is_skipped_with_its_reason(name, full_run, tmp_path):
    removed, truncated, reason = TEARS[name]
    run = copy_checkpoints(full_run, tmp_path / "run", 2, 4)
    tear(run / "checkpoint-4", removed, truncated)
    choice = find_resume_checkpoint(run)
    assert choice.checkpoint == str(run / "checkpoint-2")
    assert [(folder.name, why) for folder, why in choice.skipped] == [("checkpoint-4", checkpoint_problem(
        run / "checkpoint-4"))]
    assert reason in choice.skipped[0][1]


def test_no_complete_checkpoint_starts_from_scratch(full_run, tmp_path):
    run = copy_checkpoints(full_run, tmp_path / "run", 2)
    (run / "checkpoint-2" / "trainer_state.json").unlink()
    choice = find_resume_checkpoint(run)
    assert choice.checkpoint is None and [f.name for f, _ in choice.skipped] == ["checkpoint-2"]
    assert find_resume_checkpoint(tmp_path / "nowhere").checkpoint is None


def test_an_explicit_torn_checkpoint_is_refused(full_run, tiny_model_dir, tmp_path, capsys):
    run = copy_checkpoints(full_run, tmp_path / "run", 2)
    tear(run / "checkpoint-2", [COMPLETE_MARKER, "trainer_state.json"], None)
    config = tiny_run_file(tmp_path, tiny_model_dir, max_steps=4)
    assert train.main(["--config", str(config), "--resume", str(run / "checkpoint-2")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-2 is not a complete checkpoint: no trainer_state.json" in err and "Traceback" not in err
    assert train.main(["--config", str(config), "--resume", str(run / "checkpoint-9")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-9" in err and "Traceback" not in err


def test_a_checkpoint_written_again_loses_its_marker_first(tmp_path):
    """Resumed from an older checkpoint, training reaches a saved step again: a crash while it is
    rewritten must not leave the old marker vouching for half-new files."""
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    for name in (COMPLETE_MARKER, "trainer_state.json", "model.safetensors"):
        (folder / name).write_text("{}")
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True, save_strategy="steps")
    state = SimpleNamespace(global_step=4)
    callback = CheckpointCompletionCallback()
    callback.on_step_end(args, state, SimpleNamespace(should_save=False))
    assert (folder / COMPLETE_MARKER).exists()
    callback.on_step_end(args, state, SimpleNamespace(should_save=True))
    assert not (folder / COMPLETE_MARKER).exists() and not (folder / "trainer_state.json").exists()
    assert checkpoint_problem(folder) is not None


def test_metrics_are_cut_back_and_a_torn_line_dropped(tmp_path, caplog):
    from opid_trl.reporting.metrics_log import MetricsJSONLCallback

    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": s / 10} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    callback = MetricsJSONLCallback(tmp_path)
    state = SimpleNamespace(is_world_process_zero=True, global_step=2)
    with caplog.at_level(logging.WARNING, logger="opid_trl"):
        callback.on_train_begin(None, state, None)
    assert jsonl(path) == records[:2] and "dropped 1 unreadable line" in caplog.text
    # Killed between a record and its newline: the record stays, the next one gets its own line.
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1]))
    callback.on_train_begin(None, state, None)
    state.global_step = 3
    callback.on_log(None, state, None, logs={"loss": 0.3})
    assert jsonl(path) == records


def test_the_audit_drops_the_steps_a_resume_analyses_again(tmp_path, caplog):
    from opid_trl.skills.audit import AnalysisAuditLog

    log = AnalysisAuditLog(tmp_path, rank=0)
    log.path.parent.mkdir(parents=True)
    old = [{"global_step": s, "trajectory_id": f"{s}-{i}"} for s in range(4) for i in range(2)]
    log.path.write_text("".join(json.dumps(r) + "\n" for r in old) + '{"global_step": 3, "traj')
    with caplog.at_level(logging.WARNING, logger="opid_trl"):
        log.write(2, [], [], [])  # the first analysis of a run resumed at step 2
    assert jsonl(log.path) == old[:4]
    assert "dropped 1 unreadable line" in caplog.text and "dropped 4 record(s) of steps >= 2" in caplog.text
    log.path.write_text("".join(json.dumps(r) + "\n" for r in old))
    log.write(3, [], [], [])  # later writes of the same process append
    assert jsonl(log.path) == old


def test_resume_after_a_crash_mid_checkpoint_gives_the_uninterrupted_result(full_run, tiny_model_dir, tmp_path,
                                                                           capsys, caplog):
    """The process died while writing checkpoint-4, with a metrics line and an audit line half
    written and the audit holding steps after checkpoint-2: the resume starts from checkpoint-2 and
    ends as the uninterrupted run did, each step recorded once."""
    run = copy_checkpoints(full_run, tmp_path / "resumed" / "run", 2, 4)
    tear(run / "checkpoint-4", [COMPLETE_MARKER, "trainer_state.json"], "optimizer.pt")
    metrics = (full_run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(metrics + '{"step": 4, "loss": 0.12')  # killed mid-line
    (run / AUDIT).parent.mkdir()
    audit = (full_run / AUDIT).read_text()
    (run / AUDIT).write_text(audit + audit.splitlines()[-1][:40])  # steps 0-3 recorded, then a torn line

    config = tiny_run_file(tmp_path / "resumed", tiny_model_dir, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="opid_trl"):
        assert train.main(["--config", str(config), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint-4, incomplete (no trainer_state.json" in err
    assert f"continuing from {run / 'checkpoint-2'}" in err
    assert (run / INCOMPLETE_DIR / "checkpoint-4").is_dir()
    assert checkpoint_problem(run / "checkpoint-4") is None  # written again, complete
    assert "metrics.jsonl: dropped 1 unreadable line" in caplog.text
    assert "analyses-rank0.jsonl: dropped 1 unreadable line" in caplog.text

    assert losses(run) == pytest.approx(losses(full_run), rel=1e-5)
    steps = [r["step"] for r in jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    keys = audit_keys(run)
    assert max(keys.values()) == 1
    per_step = Counter(step for step, _ in keys)
    assert per_step == Counter(step for step, _ in audit_keys(full_run))

    from safetensors.torch import load_file

    a = load_file(full_run / "final" / "model.safetensors")
    b = load_file(run / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_kill_9_during_training_then_resume(tiny_model_dir, tmp_path):
    """A real SIGKILL once the first checkpoint is complete; the resumed run finishes, and its
    metrics and audit hold each step once."""
    max_steps = 4
    config = tiny_run_file(tmp_path, tiny_model_dir, max_steps=max_steps, save_steps=1, eval_strategy="no")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "train.log"  # a file, not a pipe: progress bars would fill a pipe nobody reads
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not (run / "checkpoint-1" / COMPLETE_MARKER).exists():
            assert proc.poll() is None, f"train.py exited early: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()  # killed before the end

    assert train.main(["--config", str(config), "--resume"]) == 0
    steps = [r["step"] for r in jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, max_steps + 1))
    keys = audit_keys(run)
    assert max(keys.values()) == 1
    assert sorted({step for step, _ in keys}) == list(range(max_steps))
    assert (run / "final" / "config.json").exists()
    assert checkpoint_problem(run / f"checkpoint-{max_steps}") is None


# -- a resume under a changed run file (the checkpoint was trained with the saved configuration)


def saved_run(full_run: Path, target: Path) -> Path:
    """An interrupted copy of the full run: checkpoint-2 and the configuration it was trained with."""
    run = copy_checkpoints(full_run, target, 2)
    shutil.copy(full_run / "run_config.json", run / "run_config.json")
    return run


def test_a_resume_that_changes_the_run_is_refused(full_run, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Group size and batch changed: refused before any model loads, every field named with its
    old and new value; a different model too (it used to fail on a raw `size mismatch`)."""
    run = saved_run(full_run, tmp_path / "run")
    before = snapshot(run)
    stop_before_training(monkeypatch)
    config = tiny_run_file(tmp_path, tiny_model_dir, max_steps=4, num_generations=4, per_device_train_batch_size=8)
    assert train.main(["--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "training.num_generations: 2 -> 4" in err and "training.per_device_train_batch_size: 4 -> 8" in err, err
    assert "training.max_steps" not in err and "Traceback" not in err
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    config = tiny_run_file(tmp_path, str(other), max_steps=4, max_turns=4)
    assert train.main(["--config", str(config), "--resume", str(run / "checkpoint-2")]) == 2
    err = capsys.readouterr().err
    assert f"model: {Path(tiny_model_dir).resolve()} -> {other.resolve()}" in err, err
    assert "training.max_turns: 3 -> 4" in err
    assert snapshot(run) == before  # nothing set aside, nothing written


def test_a_resume_with_more_steps_goes_ahead(full_run, tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    """max_steps, saving and logging may change; a run saved before configurations were recorded
    resumes with a warning."""
    run = saved_run(full_run, tmp_path / "run")
    stop_before_training(monkeypatch)
    config = tiny_run_file(tmp_path, tiny_model_dir, max_steps=8, save_steps=4, logging_steps=2, eval_steps=4,
                           max_rows_per_forward=2)
    with pytest.raises(ReachedTraining):
        train.main(["--config", str(config), "--resume"])
    (run / "run_config.json").unlink()
    with pytest.raises(ReachedTraining):
        train.main(["--config", str(config), "--resume"])
    assert "no saved run configuration" in capsys.readouterr().err
    assert json.loads((run / "run_config.json").read_text())["resolved"]["training"]["max_steps"] == 8


# -- `OPIDTrainer.train(resume_from_checkpoint=...)` from Python


def python_trainer(config: Path):
    """The trainer `train.py` builds for ``config``, built the way a Python user would."""
    from opid_trl import OPIDTrainer
    from opid_trl.runs.run_config import build_skill_extractor, build_tasks, build_training_args, load_run_config

    run = load_run_config(config)
    return OPIDTrainer(model=run.model, args=build_training_args(run), train_dataset=build_tasks(run, "train"),
                       eval_dataset=build_tasks(run, "eval"), environment=run.environment.name,
                       environment_kwargs=run.environment.kwargs, skill_extractor=build_skill_extractor(run))


def test_trainer_resume_true_skips_a_torn_checkpoint(full_run, tiny_model_dir, tmp_path):
    run = copy_checkpoints(full_run, tmp_path / "run", 2, 4)
    tear(run / "checkpoint-4", [COMPLETE_MARKER, "trainer_state.json"], "optimizer.pt")
    trainer = python_trainer(tiny_run_file(tmp_path, tiny_model_dir, max_steps=4))
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4
    assert (run / INCOMPLETE_DIR / "checkpoint-4").is_dir()
    assert checkpoint_problem(run / "checkpoint-4") is None  # written again, complete
    from safetensors.torch import load_file

    expected = load_file(full_run / "final" / "model.safetensors")
    trained = trainer.model.state_dict()
    assert all(torch.allclose(expected[k], trained[k], atol=1e-6) for k in expected)


def test_trainer_refuses_an_explicit_torn_checkpoint(full_run, tiny_model_dir, tmp_path):
    run = copy_checkpoints(full_run, tmp_path / "run", 2)
    tear(run / "checkpoint-2", [COMPLETE_MARKER, "trainer_state.json"], "optimizer.pt")
    trainer = python_trainer(tiny_run_file(tmp_path, tiny_model_dir, max_steps=4))
    with pytest.raises(ValueError, match=rf"{run / 'checkpoint-2'} is not a complete checkpoint: no trainer_state"):
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    with pytest.raises(ValueError, match=r"no complete checkpoint in .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0
