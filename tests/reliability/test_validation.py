"""Every fault of a run file fails before a model is loaded, with the field named as the file spells it.

Each fault runs through `train.main` twice: with ``--validate-only`` and as a real training run.
Every way of loading a model is replaced by a stand-in that fails the test, so a fault that
validation lets through shows up as "a model was loaded", not as some later error.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from opid_trl.runs.run_config import ConfigError, load_run_config  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart_cpu.yaml"
OPENAI = ("skill_extractor.name=openai",)


class ModelLoaded(AssertionError):
    """Raised by the stand-ins of the model loaders: validation let a fault through."""


@pytest.fixture(autouse=True)
def refuse_model_loads(monkeypatch):
    import transformers

    import opid_trl
    import opid_trl.runs.embedded

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the configuration was refused")

    monkeypatch.setattr(opid_trl.runs.embedded, "resolve_model", refuse)
    monkeypatch.setattr(opid_trl, "OPIDTrainer", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setenv("OPENAI_MODEL", "extractor-under-test")


def run_train(capsys, tmp_path: Path, *overrides: str, config: Path = QUICKSTART, validate_only: bool = True,
              options: tuple[str, ...] = ()) -> tuple[int, str]:
    argv = ["--config", str(config), *options, *(["--validate-only"] if validate_only else []),
            "training.report_to=[]", f"training.output_dir={tmp_path / 'run'}", *overrides]
    code = train.main(argv)
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, field: str) -> None:
    """Exit status 2 and a message that starts with the field, exactly as the run file spells it."""
    assert code == 2, err
    assert re.search(rf"configuration error: {re.escape(field)}[: (]", err), err


FAULTS = [
    # skill extractor kwargs, checked against the extractor's signature at load time
    ("retries-nan", OPENAI + ("skill_extractor.kwargs.max_retries=.nan",), "skill_extractor.kwargs.max_retries"),
    ("retries-inf", OPENAI + ("skill_extractor.kwargs.max_retries=.inf",), "skill_extractor.kwargs.max_retries"),
    ("retries-bool", OPENAI + ("skill_extractor.kwargs.max_retries=true",), "skill_extractor.kwargs.max_retries"),
    ("retries-negative", OPENAI + ("skill_extractor.kwargs.max_retries=-1",), "skill_extractor.kwargs.max_retries"),
    ("retries-fraction", OPENAI + ("skill_extractor.kwargs.max_retries=2.5",), "skill_extractor.kwargs.max_retries"),
    ("timeout-nan", OPENAI + ("skill_extractor.kwargs.timeout=.nan",), "skill_extractor.kwargs.timeout"),
    ("timeout-inf", OPENAI + ("skill_extractor.kwargs.timeout=.inf",), "skill_extractor.kwargs.timeout"),
    ("concurrency-text", OPENAI + ("skill_extractor.kwargs.max_concurrency=many",),
     "skill_extractor.kwargs.max_concurrency"),
    ("temperature-negative", OPENAI + ("skill_extractor.kwargs.temperature=-1.0",),
     "skill_extractor.kwargs.temperature"),
    ("api-key-number", OPENAI + ("skill_extractor.kwargs.api_key=123",), "skill_extractor.kwargs.api_key"),
    ("record-chars-bool", OPENAI + ("skill_extractor.kwargs.max_record_chars=true",),
     "skill_extractor.kwargs.max_record_chars"),
    ("openai-unknown-kwarg", OPENAI + ("skill_extractor.kwargs.retries=3",), "skill_extractor.kwargs.retries"),
    ("rule-threshold-bool", ("skill_extractor.kwargs.repeat_threshold=true",),
     "skill_extractor.kwargs.repeat_threshold"),
    ("rule-unknown-kwarg", ("skill_extractor.kwargs.colour=red",), "skill_extractor.kwargs.colour"),
    ("extractor-kwargs-list", ("skill_extractor.kwargs=[1]",), "skill_extractor.kwargs"),
    # task counts: negative gave 0 tasks, 0 / false / "" gave the default 256
    ("tasks-negative", ("environment.train.num_tasks=-3",), "environment.train.num_tasks"),
    ("tasks-zero", ("environment.train.num_tasks=0",), "environment.train.num_tasks"),
    ("tasks-false", ("environment.train.num_tasks=false",), "environment.train.num_tasks"),
    ("tasks-empty-text", ('environment.train.num_tasks=""',), "environment.train.num_tasks"),
    ("tasks-fraction", ("environment.train.num_tasks=2.5",), "environment.train.num_tasks"),
    ("tasks-yaml-text-number", ("environment.train.num_tasks=1e3",), "environment.train.num_tasks"),
    ("eval-tasks-zero", ("environment.eval.num_tasks=0",), "environment.eval.num_tasks"),
    ("train-seed-bool", ("environment.train.seed=true",), "environment.train.seed"),
    ("train-split-null", ("environment.train=null",), "environment.train"),
    ("sft-tasks-zero", ("sft.num_tasks=0",), "sft.num_tasks"),
    ("sft-epochs-nan", ("sft.epochs=.nan",), "sft.epochs"),
    ("sft-lr-inf", ("sft.learning_rate=.inf",), "sft.learning_rate"),
    ("sft-batch-bool", ("sft.batch_size=true",), "sft.batch_size"),
    ("sft-subdir-escapes", ("sft.output_subdir=../elsewhere",), "sft.output_subdir"),
    # OPID and GRPO numbers
    ("skill-coef-episode-inf", ("training.skill_coef_episode=.inf",), "training.skill_coef_episode"),
    ("skill-coef-step-nan", ("training.skill_coef_step=.nan",), "training.skill_coef_step"),
    ("penalty-nan", ("training.invalid_action_penalty=.nan",), "training.invalid_action_penalty"),
    ("lr-nan", ("training.learning_rate=.nan",), "training.learning_rate"),
    ("lr-inf", ("training.learning_rate=.inf",), "training.learning_rate"),
    ("lr-yaml-text", ("training.learning_rate=5e-6",), "training.learning_rate"),
    ("beta-negative", ("training.beta=-0.1",), "training.beta"),
    ("beta-nan", ("training.beta=.nan",), "training.beta"),
    ("clip-nan", ("training.skill_adv_clip=.nan",), "training.skill_adv_clip"),
    ("gamma-nan", ("training.analysis_gamma=.nan",), "training.analysis_gamma"),
    ("temperature-zero", ("training.temperature=0",), "training.temperature"),
    # booleans where a count is expected (True is an int to Python)
    ("max-turns-bool", ("training.max_turns=true",), "training.max_turns"),
    ("history-bool", ("training.history_length=false",), "training.history_length"),
    ("rows-bool", ("training.max_rows_per_forward=true",), "training.max_rows_per_forward"),
    ("workers-bool", ("training.env_step_workers=true",), "training.env_step_workers"),
    ("max-steps-bool", ("training.max_steps=true",), "training.max_steps"),
    # the model
    ("model-missing-relative", ("model=./no/such/dir",), "model"),
    ("model-missing-nested", ("model=no/such/dir",), "model"),
    ("model-missing-home", ("model=~/no-such-opid-model",), "model"),
    ("model-not-a-hub-id", ("model=not a model!",), "model"),
    # overrides themselves
    ("override-duplicate-key", ("environment.kwargs={a: 1, a: 2}",), "environment.kwargs.a"),
    ("override-bad-yaml", ("training.max_steps=[1",), "training.max_steps"),
]


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
@pytest.mark.parametrize("overrides,field", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_is_refused_before_any_model_load(overrides, field, validate_only, capsys, tmp_path):
    code, err = run_train(capsys, tmp_path, *overrides, validate_only=validate_only)
    assert_refused(code, err, field)


def test_the_quickstart_itself_still_validates(capsys, tmp_path):
    code, err = run_train(capsys, tmp_path)
    assert code == 0, err


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
def test_duplicate_key_in_a_run_file_names_key_and_lines(validate_only, capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {QUICKSTART}\n"
                    "training:\n"
                    "  max_steps: 3\n"
                    "  learning_rate: 1.0e-5\n"
                    "  max_steps: 30\n")
    code, err = run_train(capsys, tmp_path, config=path, validate_only=validate_only)
    assert_refused(code, err, "training.max_steps")
    assert "lines 3 and 5" in err


def test_duplicate_section_in_a_run_file_is_refused(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {QUICKSTART}\ntraining: {{max_steps: 3}}\nmodel: smollm2-135m-instruct\n"
                    "training: {max_steps: 4}\n")
    code, err = run_train(capsys, tmp_path, config=path)
    assert_refused(code, err, "training")
    assert "lines 2 and 4" in err


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: smollm2-135m-instruct\n"
                    "environment:\n"
                    "  train: &split {split: train, num_tasks: 8, seed: 0}\n"
                    "  eval:\n"
                    "    <<: *split\n"
                    "    num_tasks: 2\n")
    run = load_run_config(path)
    assert (run.environment.train.num_tasks, run.environment.eval.num_tasks) == (8, 2)


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
def test_model_folder_without_a_model_is_refused(validate_only, capsys, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, err = run_train(capsys, tmp_path, f"model={empty}", validate_only=validate_only)
    assert_refused(code, err, "model")
    assert "config.json" in err


def test_model_names_that_are_accepted(capsys, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in ("smollm2-135m-instruct", "SmolLM2-135M-Instruct", "Qwen/Qwen2.5-3B-Instruct", str(folder)):
        code, err = run_train(capsys, tmp_path, f"model={name}")
        assert code == 0, (name, err)


def test_home_relative_model_folder_is_expanded(monkeypatch, tmp_path):
    from opid_trl.runs.run_config import check_model

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    run = load_run_config(QUICKSTART, ["model=~/model"])
    assert check_model(run) == str(tmp_path / "model")  # from_pretrained does not expand ~ itself


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
def test_use_vllm_without_vllm_is_refused(validate_only, monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    code, err = run_train(capsys, tmp_path, "training.use_vllm=true", validate_only=validate_only)
    assert_refused(code, err, "training.use_vllm")
    assert "vLLM is not installed" in err


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
def test_use_vllm_with_a_broken_vllm_is_refused(validate_only, monkeypatch, capsys, tmp_path):
    """Found (find_spec answers) but failing on import: a build for another torch or CUDA."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: importlib.machinery.ModuleSpec("vllm", None) if name == "vllm"
                        else real(name, *a))
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises
    code, err = run_train(capsys, tmp_path, "training.use_vllm=true", validate_only=validate_only)
    assert_refused(code, err, "training.use_vllm")
    assert "cannot be imported" in err


def test_a_vllm_that_breaks_the_import_of_opid_trl_is_named():
    """TRL imports vLLM whenever it is installed: train.py names vLLM instead of a bare traceback."""
    broken = ModuleNotFoundError("No module named 'vllm._C'", name="vllm._C")
    message = train.vllm_import_failure(broken)
    assert message is not None and message.startswith("training.use_vllm:") and "pip uninstall vllm" in message
    assert train.vllm_import_failure(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "train"])
def test_missing_resume_checkpoint_is_refused(validate_only, capsys, tmp_path):
    code, err = run_train(capsys, tmp_path, options=("--resume", str(tmp_path / "checkpoint-9")),
                          validate_only=validate_only)
    assert_refused(code, err, "--resume")


def test_load_run_config_checks_the_sections_without_train_py(tmp_path):
    """evaluate.py and the tests read run files through `load_run_config` alone: it checks them too."""
    with pytest.raises(ConfigError, match=r"^environment\.train\.num_tasks:"):
        load_run_config(QUICKSTART, ["environment.train.num_tasks=-3"])
    with pytest.raises(ConfigError, match=r"^skill_extractor\.kwargs\.max_retries:"):
        load_run_config(QUICKSTART, [*OPENAI, "skill_extractor.kwargs.max_retries=.nan"])
