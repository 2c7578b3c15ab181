"""The trainer records a bounded sample of re-scored rows per step for the token heatmaps."""

import json
import math

import pytest
from datasets import Dataset

from opid_trl import EpisodeSkills, OPIDTrainer

from .conftest import tiny_config


def extractor(trajectories):
    return [EpisodeSkills("Walk east until the target is here, then take it.", {1: "Go east."}) for _ in trajectories]


@pytest.mark.parametrize("explicit_old_pass", [False, True], ids=["l_old-from-the-loss", "explicit-old-pass"])
def test_records_hold_both_log_probs_of_every_token(tiny_model_dir, tiny_tokenizer, tmp_path, explicit_old_pass):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0, heatmap_rows=3,
                                           skill_adv_normalize=explicit_old_pass),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          skill_extractor=extractor)
    trainer.train()
    path = tmp_path / "out" / "heatmaps" / "step-0-rank0.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert 1 <= len({(r["trajectory_id"], r["step_index"]) for r in records}) <= 3  # bounded sample of rows
    for record in records:
        assert record["kind"] in ("episode", "step") and record["skill"]
        assert len(record["tokens"]) == len(record["l_old"]) == len(record["l_skill"]) > 0
        assert all(math.isfinite(v) for v in record["l_old"] + record["l_skill"])
        assert record["skill"] in record["skill_prompt"] and record["skill"] not in record["prompt"]
        assert record["coef"] == 1e-3 and record["global_step"] == 0
    step_records = [r for r in records if r["kind"] == "step"]
    assert all(r["step_index"] == 1 for r in step_records)  # the critical step carries the step skill


def test_no_recording_by_default(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          skill_extractor=extractor)
    trainer.train()
    assert trainer.skill_reports.heatmaps is None and not (tmp_path / "out" / "heatmaps").exists()


def test_loss_step_l_old_equals_the_explicit_pass(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    def record(name, explicit):
        trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                              args=tiny_config(tmp_path / name, max_steps=1, beta=0.0, heatmap_rows=2),
                              train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                              skill_extractor=extractor)
        if explicit:
            monkeypatch.setattr(trainer, "_needs_explicit_old_pass", lambda active: active)
        trainer.train()
        lines = (tmp_path / name / "out" / "heatmaps" / "step-0-rank0.jsonl").read_text().splitlines()
        return sorted((r["trajectory_id"], r["step_index"], r["kind"], r["l_old"], r["l_skill"])
                      for r in map(json.loads, lines))

    fused, explicit = record("fused", False), record("explicit", True)
    assert [r[:3] for r in fused] == [r[:3] for r in explicit]
    for a, b in zip(fused, explicit):
        assert a[3] == pytest.approx(b[3], rel=1e-5, abs=1e-6) and a[4] == pytest.approx(b[4], rel=1e-5, abs=1e-6)


def test_reports_reach_tensorboard(tiny_model_dir, tiny_tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0, heatmap_rows=2,
                                           report_to=["tensorboard"]),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          skill_extractor=extractor)
    trainer.train()
    report = tmp_path / "out" / "heatmaps" / "step-0-rank0.html"
    assert report.exists() and "l_skill=" in report.read_text()
    events = [EventAccumulator(str(path.parent)).Reload() for path in tmp_path.rglob("events.out.tfevents.*")]
    assert events
    tags = {tag for acc in events for tag in acc.Tags().get("tensors", [])}
    assert any(tag.startswith("skill_heatmap") for tag in tags), tags
