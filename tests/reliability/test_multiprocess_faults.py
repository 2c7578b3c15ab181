"""A fault on one rank of a two-process run never hangs the other rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opid_trl.testing import free_port

WORKER = Path(__file__).with_name("fault_worker.py")


@pytest.mark.slow
def test_raising_and_hanging_environments_on_one_rank(tiny_model_dir, tmp_path):
    output = tmp_path / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER), "--model", tiny_model_dir, "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the run hung: {(exc.stderr or b'')[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(output.read_text())
    assert result["finite"] and len(result["losses"]) == 2
    assert all(errors >= 2 for errors in result["errors"])  # rank 1's two episodes fail at every step
