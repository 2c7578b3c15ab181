"""Skill extractors plugged into OPIDTrainer: rule-based, the policy itself, and the audit trail."""

import json
import math
from pathlib import Path

from datasets import Dataset

from opid_trl import OPIDTrainer
from opid_trl.skills.extractors import PolicySkillExtractor, RuleBasedSkillExtractor

from .conftest import tiny_config


def tasks(n=8):
    return Dataset.from_list([{"seed": i} for i in range(n)])


def test_rule_based_by_name_with_audit_log(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, beta=0.0), train_dataset=tasks(),
                          processing_class=tiny_tokenizer, environment="fetch", skill_extractor="rule_based")
    assert isinstance(trainer.skill_extractor, RuleBasedSkillExtractor) and trainer.skill_extractor.max_step_skills == 5
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["skill_extractor/requests"] == 4 and h["skill/adv_abs_max"] > 0 for h in history)
    lines = (Path(trainer.args.output_dir) / "analysis" / "analyses-rank0.jsonl").read_text().splitlines()
    assert len(lines) == 8  # 2 steps x 4 episodes
    record = json.loads(lines[0])
    assert record["global_step"] == 0 and record["episode_skill"].startswith("Avoid these mistakes")
    assert len(record["routing"]) == record["num_steps"] == 3
    assert set(record["routing"]) <= {"step", "episode"}


def test_policy_skill_extractor_runs_end_to_end(tiny_model_dir, tiny_tokenizer, tmp_path):
    extractor = PolicySkillExtractor(max_new_tokens=16, max_record_chars=800)
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, beta=0.0), train_dataset=tasks(),
                          processing_class=tiny_tokenizer, environment="fetch", skill_extractor=extractor)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["loss"]) for h in history)
    # the random policy cannot write the JSON: every analysis fails cleanly, after one re-ask each
    assert all(h["skill_extractor/requests"] == 8 and h["skill_extractor/reasks"] == 4 for h in history)
    assert all(h["skill/analysis_failures"] == 4 and h["skill/routed_step_frac"] == 0 for h in history)
    record = json.loads((Path(trainer.args.output_dir) / "analysis" / "analyses-rank0.jsonl").read_text()
                        .splitlines()[0])
    assert record["error"].startswith("parse:") and record["raw_answer"] is not None
    assert record["completion_tokens"] > 0 and record["routing"] == ["none"] * 3
