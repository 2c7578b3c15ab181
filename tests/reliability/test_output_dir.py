"""One run per output folder: a second run on a folder in use, and a fresh run on a used folder.

Two `train.py` processes on one ``training.output_dir`` both trained and exited 0, their metrics
interleaved (``[1, 1, 2, 2, ...]``) and their checkpoints written over each other; a fresh run on a
used folder silently cut the old metrics and audit and left the old checkpoints. Each fault is
injected here: the second run must exit 2 before any model is loaded, naming the folder, and leave
the first run's files as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from opid_trl.testing import free_port
from tests.test_train_cli import ROOT, tiny_run_file


class ReachedTraining(Exception):
    """Raised by the stand-in of the trainer: the run got past every check of its output folder."""


def stop_before_training(monkeypatch) -> None:
    """Replace the model loading of `train.main` by `ReachedTraining`: a refused run must never
    get there, an accepted one stops there (no training needed to tell them apart)."""
    import opid_trl
    import opid_trl.runs.embedded

    def reached(*args, **kwargs):
        raise ReachedTraining()

    monkeypatch.setattr(opid_trl.runs.embedded, "resolve_model", reached)
    monkeypatch.setattr(opid_trl, "OPIDTrainer", reached)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its content (the lock files excepted: they are the lock's)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".opid-run")}


def earlier_run(run: Path) -> None:
    """The files an earlier run leaves: metrics up to step 6, a checkpoint, the audit."""
    (run / "checkpoint-6").mkdir(parents=True)
    (run / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6}')
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 7)))
    (run / "analysis").mkdir()
    (run / "analysis" / "analyses-rank0.jsonl").write_text(json.dumps({"global_step": 5}) + "\n")


def test_a_second_run_on_a_folder_in_use_is_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A real first run holds the folder; a second one (fresh or `--resume`) exits 2 naming the
    folder and the first run's pid, and the first run's metrics keep one record per step."""
    config = tiny_run_file(tmp_path, tiny_model_dir, max_steps=200, eval_strategy="no", save_strategy="no")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():  # the first run is training
            assert first.poll() is None, f"the first run exited early: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the first run logged no step within 120 s"
            time.sleep(0.05)
        stop_before_training(monkeypatch)
        for options in ([], ["--resume"], ["--overwrite"]):
            assert train.main(["--config", str(config), *options]) == 2, options
            err = capsys.readouterr().err
            assert f"training.output_dir: {run} is in use by another run" in err, err
            assert f"pid {first.pid}" in err and "Traceback" not in err
        assert first.poll() is None  # the first run was left alone
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps == sorted(set(steps))  # no record of a second run among the first one's


@pytest.mark.parametrize("left", ["metrics.jsonl", "checkpoint-6", "analysis"])
def test_a_fresh_run_on_a_used_folder_is_refused(left, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Any one of the files of an earlier run is enough; nothing of it is touched."""
    run = tmp_path / "run"
    earlier_run(run)
    for other in {"metrics.jsonl", "checkpoint-6", "analysis"} - {left}:
        path = run / other
        path.unlink() if path.is_file() else shutil.rmtree(path)
    before = snapshot(run)
    stop_before_training(monkeypatch)
    assert train.main(["--config", str(tiny_run_file(tmp_path, tiny_model_dir))]) == 2
    err = capsys.readouterr().err
    assert f"training.output_dir: {run} holds an earlier run ({left}" in err, err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_a_folder_with_only_a_warm_start_is_not_a_used_run(tiny_model_dir, tmp_path, monkeypatch):
    """The warm start (``sft/``), a run file and a log are made before a run (the learning-curve
    harness writes them into a cell's folder): the run goes ahead."""
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "config.json").write_text("{}")
    (run / "train.log").write_text("")
    config = tiny_run_file(tmp_path, tiny_model_dir)
    stop_before_training(monkeypatch)
    with pytest.raises(ReachedTraining):
        train.main(["--config", str(config)])


def test_overwrite_moves_the_earlier_run_aside(tiny_model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    earlier_run(run)
    before = snapshot(run)
    config = tiny_run_file(run, tiny_model_dir, output_dir=str(run))  # a run file kept in the folder stays there
    stop_before_training(monkeypatch)
    with pytest.raises(ReachedTraining):
        train.main(["--config", str(config), "--overwrite"])
    previous = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(previous) == 1 and snapshot(previous[0]) == before
    assert f"moved to {previous[0]}" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".opid-run")) == sorted(
        [previous[0].name, "run.yaml", "run_config.json"])  # the new run's configuration
    # A second overwrite keeps the first one's folder beside its own.
    earlier_run(run)
    with pytest.raises(ReachedTraining):
        train.main(["--config", str(config), "--overwrite"])
    assert len([p for p in run.iterdir() if p.name.startswith("previous-")]) == 2


@pytest.mark.slow
def test_every_rank_of_a_refused_run_exits(tiny_model_dir, tmp_path):
    """Only the main process locks and checks the folder; the other rank learns the verdict from it
    and exits 2 as well, instead of waiting for it at a barrier. The two ranks are started by hand
    (torchrun's environment, without its agent, which would kill a waiting rank and hide it)."""
    run = tmp_path / "run"
    earlier_run(run)
    config = tiny_run_file(tmp_path, tiny_model_dir, per_device_train_batch_size=2, per_device_eval_batch_size=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    ranks = []
    for rank in (0, 1):
        log = (tmp_path / f"rank{rank}.log").open("w")
        ranks.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config)], cwd=ROOT,
                                      env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log,
                                      stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait(timeout=300) for proc in ranks]
    except subprocess.TimeoutExpired:
        pytest.fail("a rank hung: " + " | ".join((tmp_path / f"rank{r}.log").read_text()[-1500:] for r in (0, 1)))
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [2, 2], logs
    assert f"training.output_dir: {run} holds an earlier run" in logs[0]
    assert "holds an earlier run" not in logs[1] and "Traceback" not in logs[0] + logs[1]  # said once


def test_an_output_dir_that_cannot_be_written_is_refused_before_any_model_loads(tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    """A full disk or a read-only mount: the lock file cannot be created (simulated by an OS error
    from the lock, which also holds for root, who writes into read-only folders)."""
    from opid_trl.runs import run_dir

    def full_disk(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(run_dir, "lock_output_dir", full_disk)
    stop_before_training(monkeypatch)
    assert train.main(["--config", str(tiny_run_file(tmp_path, tiny_model_dir))]) == 2
    err = capsys.readouterr().err
    assert "training.output_dir: [Errno 28] No space left on device" in err and "Traceback" not in err
