"""Lone surrogates and control characters from environments and skill extractors: cleaned where
they enter, so that neither the tokenizer, the prompt nor a log writer ever sees them."""

import json

from datasets import Dataset

from environments import FetchEnvironment
from opid_trl import EpisodeSkills, OPIDTrainer
from opid_trl.trajectory import clip_skill
from opid_trl.untrusted_text import clean_text

from ..conftest import tiny_config

HOSTILE = "\ud800 bad\x00 \x1b[31mred\x1b[0m \x7f\x85 end"


def test_clean_text_by_hand():
    assert clean_text(HOSTILE) == "\ufffd bad [31mred[0m  end"
    assert clean_text("line one\n\ttab \u00e9t\u00e9 \u4e2d\u6587 \U0001f600\r\n") == (
        "line one\n\ttab \u00e9t\u00e9 \u4e2d\u6587 \U0001f600\r\n")
    assert clip_skill(HOSTILE, 300) == "\ufffd bad [31mred[0m end"  # every skill passes through it


class HostileFetch(FetchEnvironment):
    """Fetch whose task, observations and actions carry a lone surrogate and control characters."""

    def reset(self, task):
        observation = super().reset(task)
        self.task_description = "take the \ud800 " + self.task_description + "\x00"
        return observation + " \x1b[2J\ud801"

    def execute(self, action):
        observation, reward, done, won, info = super().execute(action)
        return observation + "\x00\ud802", reward, done, won, info


def hostile_extractor(trajectories):
    return [EpisodeSkills("Walk east \ud800 then \x1b[31mtake\x00 it.", {0: "Go east\udfff now."},
                          meta={"raw": "answer with \ud800"}) for _ in trajectories]


def test_a_run_with_hostile_text_everywhere_trains_and_logs(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment=HostileFetch,
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0, heatmap_rows=4,
                                           skill_signal_diagnostics=True),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]),
                          skill_extractor=hostile_extractor)
    trainer.train()
    out = tmp_path / "out"
    audit = [json.loads(line) for line in (out / "analysis" / "analyses-rank0.jsonl").read_text().splitlines()]
    heat = [json.loads(line) for line in (out / "heatmaps" / "step-0-rank0.jsonl").read_text().splitlines()]
    assert audit and heat
    for record in heat:
        for text in (record["prompt"], record["skill_prompt"], record["skill"]):
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text) and "\x1b" not in text and "\x00" not in text
        assert "\ufffd" in record["prompt"] and "take the" in record["prompt"]
    # the audit keeps what the extractor said (meta), escaped: it round-trips, surrogate included
    assert audit[0]["episode_skill"] == "Walk east \ufffd then [31mtake it."


def test_clip_text_by_hand():
    from opid_trl.untrusted_text import clip_text

    assert clip_text("short", 10) == "short"
    assert clip_text("abcdefghij" * 3, 10) == "abcdefghij [... 20 characters left out ...] "
    assert clip_text("abcdefghij" * 3, 8, head_share=0.25) == "ab [... 22 characters left out ...] efghij"
    # a prompt's cut: the marker counts against the budget, and a cut word backs off to a space
    assert clip_text("go east then take the key", 13, marker="\u2026", word_boundary=True) == "go east then\u2026"
    assert clip_text("go east then take the key", 10, marker="\u2026", word_boundary=True) == "go east\u2026"
    assert clip_text("x" * 20, 6, marker="\u2026", word_boundary=True) == "xxxxx\u2026"  # no space: cut hard
