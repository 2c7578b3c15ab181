"""The examples run as documented (on the tiny model, one step)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:You are using '.*', which is an experimental feature")


@pytest.mark.parametrize("trainer", ["grpo", "opid"])
def test_search_qa_tools_trains_with_grpo_and_with_opid(tiny_model_dir, tmp_path, monkeypatch, trainer):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("search_qa_tools", None)
    import search_qa_tools

    run = search_qa_tools.main(["--trainer", trainer, "--model", tiny_model_dir, "--output-dir", str(tmp_path),
                                "--max-steps", "1", "--num-tasks", "4"])
    logged = run["history"][0]
    assert "loss" in logged and "rewards/SearchQATools/mean" in logged
    if trainer == "opid":
        assert type(run["trainer"]).__name__ == "OPIDTrainer"
        assert logged["skill/rows_without_turn_skills"] == 0 and logged["skill/analysis_failures"] == 0
