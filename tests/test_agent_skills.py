"""OPID on TRL's own agent rollouts (`tools=`, `environment_factory=`): a trajectory per conversation,
a skill per assistant turn, each scored after its own context on the same sampled tokens.

The rollouts are TRL's real tool-call loop on the tiny model whose first turn is scripted to call a
tool (`opid_trl.testing.scripted_model`); the turns after a tool result are sampled freely.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from opid_trl import OPIDConfig, OPIDTrainer
from opid_trl.algorithms.routing import EPISODE_SKILL_TITLE, STEP_SKILL_TITLE
from opid_trl.skills.conversation import split_conversation, tool_call_text, turn_spans
from opid_trl.testing import first_turn_asking, scripted_model, tool_call, tool_tokenizer
from opid_trl.trajectory import EpisodeSkills

from .test_dropin import comparable, length_reward, train_run
from .test_dropin_tools import TOOL_ARGS, Counter, counter_reward, tool_rows

pytestmark = pytest.mark.filterwarnings("ignore:You are using '.*', which is an experimental feature")


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a * b


class TurnSkills:
    """A skill extractor that writes an episode skill and a step skill for every turn, and keeps what it read."""

    def __init__(self) -> None:
        self.seen: list = []

    def __call__(self, trajectories):
        self.seen += list(trajectories)
        return [EpisodeSkills(episode_skill=f"Episode advice {t.trajectory_id}.",
                              step_skills={j: f"Turn {j} advice." for j in range(len(t.steps))}) for t in trajectories]


class Recorder:
    """Wraps the skill stage's `score_prompts`: every context and completion it was asked to score."""

    def __init__(self, trainer: OPIDTrainer) -> None:
        self.calls: list[tuple[list[list[int]], torch.Tensor, torch.Tensor]] = []
        self.logps: list[torch.Tensor] = []
        inner = trainer.skill_stage.score_prompts

        def score(contexts, completion_ids, completion_mask):
            self.calls.append(([list(c) for c in contexts], completion_ids.clone(), completion_mask.clone()))
            self.logps.append(inner(contexts, completion_ids, completion_mask))
            return self.logps[-1]

        trainer.skill_stage.score_prompts = score


#: OPID's own fields of `opid_args` (a GRPOConfig of the same run leaves them out).
SKILL_FIELDS = ("skill_coef_episode", "skill_coef_step", "skill_routing")


def opid_args(tmp_path, grpo: bool = False, **overrides: Any) -> OPIDConfig | GRPOConfig:
    """The run's config: TRL's tool settings with room for a second turn, skill weights 0.5."""
    values: dict[str, Any] = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                                  max_steps=1, learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                                  use_cpu=True, bf16=False, seed=0, skill_coef_episode=0.5, skill_coef_step=0.5,
                                  **{**TOOL_ARGS, "max_completion_length": 160})
    values.update(overrides)
    if grpo:
        return GRPOConfig(**{k: v for k, v in values.items() if k not in SKILL_FIELDS})
    return OPIDConfig(**values)


def tool_trainer(tiny_model_dir, tmp_path, extractor, **overrides: Any) -> OPIDTrainer:
    tokenizer = tool_tokenizer(tiny_model_dir)
    model = scripted_model(tiny_model_dir, tokenizer, first_turn_asking("Multiply", tool_call("multiply", a=3, b=4)))
    return OPIDTrainer(model=model, reward_funcs=length_reward, args=opid_args(tmp_path, **overrides),
                       train_dataset=tool_rows(), processing_class=tokenizer, tools=[multiply],
                       skill_extractor=extractor)


def test_turn_spans_are_the_runs_of_the_loss_mask():
    assert turn_spans([1, 1, 0, 0, 1, 0, 1, 1, 1]) == [(0, 2), (4, 5), (6, 9)]
    assert turn_spans([0, 0]) == [] and turn_spans([]) == [] and turn_spans([1]) == [(0, 1)]


def test_split_conversation_matches_messages_to_spans():
    assistant = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]}
    tool = {"role": "tool", "name": "multiply", "content": "12"}
    final = {"role": "assistant", "content": "12"}
    c = split_conversation([{"role": "user", "content": "Multiply 3 by 4."}], [7, 8], list(range(10)),
                           [1, 1, 1, 0, 0, 0, 1, 1, 0, 0], [assistant, tool, final])
    assert c.spans == [(0, 3), (6, 8)] and c.turns == [assistant, final] and c.tool_results == [[], [tool]]
    assert c.task == "Multiply 3 by 4."
    assert tool_call_text(assistant) == 'multiply({"a": 3, "b": 4})' and tool_call_text(final) is None
    # a mask with more runs than assistant messages (or none) is not guessed at
    assert split_conversation([], [], [1, 2], [1, 0], [assistant, tool, final]) is None
    assert split_conversation([], [], [1, 2], [0, 0], []) is None


class Completed:
    """Wraps `SkillStage.complete`: each batch's advantages once A_OPID is complete, and its tool mask."""

    def __init__(self, trainer: OPIDTrainer) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        inner = trainer.skill_stage.complete

        def complete(batch, old_logps):
            outcome = batch["advantages"].clone()
            part = inner(batch, old_logps)
            self.batches.append({"outcome": outcome, "old_logps": old_logps.clone(), "advantages": batch["advantages"].clone(),
                                 "completion_ids": batch["completion_ids"].clone(), "tool_mask": batch["tool_mask"],
                                 "completion_mask": batch["completion_mask"].clone(),
                                 "prompt_ids": batch["prompt_ids"].clone(), "prompt_mask": batch["prompt_mask"].clone()})
            return part

        trainer.skill_stage.complete = complete


def unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


def test_every_turn_is_scored_on_its_sampled_tokens_after_its_own_context(tiny_model_dir, tmp_path):
    extractor = TurnSkills()
    trainer = tool_trainer(tiny_model_dir, tmp_path, extractor, skill_routing="additive")
    recorder, completed = Recorder(trainer), Completed(trainer)
    trainer.train()
    decode = trainer.processing_class.decode
    # the loss step sees the batch's rows shuffled (TRL): put them back in the order they were scored in
    batch = completed.batches[0]
    width = min(batch["completion_ids"].size(1), recorder.calls[0][1].size(1))
    order = [next(j for j, row in enumerate(batch["completion_ids"]) if torch.equal(row[:width], ids[:width]))
             for ids in recorder.calls[0][1]]
    assert sorted(order) == list(range(len(order)))
    batch = {key: value[order] for key, value in batch.items()}
    rows = batch["completion_ids"].size(0)
    # one trajectory per row, one step per assistant turn: the tool call, then the answer after the result
    assert [len(t.steps) for t in extractor.seen] == [2] * rows
    assert all(t.steps[0].action == 'multiply({"a": 3, "b": 4})' and t.steps[1].observation == "12"
               and t.steps[1].action is None and t.task.startswith("Multiply") for t in extractor.seen)
    loss_mask = batch["completion_mask"] * batch["tool_mask"]
    spans = [turn_spans(m.tolist()) for m in loss_mask]
    assert all(len(s) == 2 for s in spans)
    # the turn spans hold every assistant token and no tool-result token
    for i, (first, second) in enumerate(spans):
        completion = batch["completion_ids"][i].tolist()
        assert "<tool_call>" in decode(completion[slice(*first)])
        assert "<tool_response>" in decode(completion[first[1] : second[0]])
        assert "<tool_response>" not in decode(completion[slice(*first)] + completion[slice(*second)])
    # the passes: the episode skill over whole completions (4 units), then one step skill per turn (8 units)
    (episode_contexts, episode_ids, episode_mask), (step_contexts, step_ids, step_mask) = recorder.calls
    assert len(episode_contexts) == rows and len(step_contexts) == 2 * rows
    for i in range(rows):
        prompt = unpad(batch["prompt_ids"][i], batch["prompt_mask"][i])
        completion = unpad(batch["completion_ids"][i], batch["completion_mask"][i])
        (s0, e0), (s1, e1) = spans[i]
        # episode unit: a new prompt, the same sampled completion, counted only on the turns
        assert episode_ids[i, : len(completion)].tolist() == completion
        assert episode_mask[i, : len(completion)].tolist() == loss_mask[i, : len(completion)].tolist()
        text = decode(episode_contexts[i])
        assert EPISODE_SKILL_TITLE in text.rsplit("<|im_start|>user", 1)[1].split("<|im_end|>")[0]
        block = f"\n\n{EPISODE_SKILL_TITLE}\nEpisode advice {extractor.seen[i].trajectory_id}."
        assert text.replace(block, "") == decode(prompt)  # the block, and nothing else, was added
        # step unit of the first turn: the skill in the last user message, the turn's own tokens scored
        first, second = 2 * i, 2 * i + 1
        assert step_ids[first, : e0 - s0].tolist() == completion[s0:e0] and int(step_mask[first].sum()) == e0 - s0
        text = decode(step_contexts[first])
        assert "Turn 0 advice." in text.rsplit("<|im_start|>user", 1)[1].split("<|im_end|>")[0]
        assert text.replace(f"\n\n{STEP_SKILL_TITLE}\nTurn 0 advice.", "") == decode(prompt)  # nothing else moved
        # step unit of the second turn: the prompt and first turn as sampled, the skill in the tool result
        context = step_contexts[second]
        assert context[: len(prompt) + e0] == prompt + completion[:e0]
        suffix = decode(context[len(prompt) + e0 :])
        assert suffix.index("<tool_response>") < suffix.index("Turn 1 advice.") < suffix.index("</tool_response>")
        assert suffix.endswith("<|im_start|>assistant\n")
        assert step_ids[second, : e1 - s1].tolist() == completion[s1:e1] and int(step_mask[second].sum()) == e1 - s1
    # A_skill: zero on tool-result tokens, non-zero on the turns (every reward is 0 here: A_ep = 0)
    assert torch.count_nonzero(batch["outcome"]) == 0
    skill = batch["advantages"] - batch["outcome"]
    assert torch.all(skill[(batch["tool_mask"] == 0) & (batch["completion_mask"] == 1)] == 0)
    assert torch.all(skill[batch["completion_mask"] == 0] == 0)
    # ... and on each turn exactly 0.5 (l_episode - l_old) + 0.5 (l_step of that turn's own unit - l_old)
    episode_logps, step_logps = recorder.logps
    for i, turns in enumerate(spans):
        for j, (start, end) in enumerate(turns):
            old = batch["old_logps"][i, start:end]
            expected = 0.5 * (episode_logps[i, start:end] - old) + 0.5 * (step_logps[2 * i + j, : end - start] - old)
            torch.testing.assert_close(skill[i, start:end], expected, rtol=1e-5, atol=1e-6)
            assert torch.count_nonzero(skill[i, start:end]) > 0


def last_turn_length(completions: list, **kwargs: Any) -> list[float]:
    return [len(c[-1]["content"]) / 10 for c in completions]


def tool_pipeline(tiny_model_dir, tmp_path, extractor=None, **overrides: Any):
    def build(name: str) -> dict[str, Any]:
        tokenizer = tool_tokenizer(tiny_model_dir)
        model = scripted_model(tiny_model_dir, tokenizer, first_turn_asking("Multiply", tool_call("multiply", a=3, b=4)))
        args = opid_args(tmp_path / name, grpo=name == "grpo", max_steps=2, **overrides)
        kwargs = dict(model=model, reward_funcs=last_turn_length, args=args,
                      train_dataset=tool_rows(), processing_class=tokenizer, tools=[multiply])
        return kwargs if name == "grpo" else {**kwargs, "skill_extractor": extractor}

    return build


def test_with_both_weights_zero_it_trains_as_grpo_and_with_skills_the_skill_term_reaches_the_loss(tiny_model_dir,
                                                                                                  tmp_path):
    grpo = train_run(GRPOTrainer, **tool_pipeline(tiny_model_dir, tmp_path)("grpo"))
    zero = train_run(OPIDTrainer, **tool_pipeline(tiny_model_dir, tmp_path, TurnSkills(), skill_coef_episode=0.0,
                                                  skill_coef_step=0.0)("zero"))
    opid = train_run(OPIDTrainer, **tool_pipeline(tiny_model_dir, tmp_path, TurnSkills())("opid"))

    def logged(run, key):
        return [e[key] for e in run.history if key in e]

    assert logged(grpo, "tools/call_frequency") and any(f > 0 for f in logged(grpo, "tools/call_frequency"))
    assert any(not torch.equal(grpo.initial[n], w) for n, w in grpo.weights.items()), "GRPO moved no weight"
    # every value GRPO logged, OPID logged too and equal (OPID adds its own skill/* and time/* keys)
    assert len(zero.history) == len(grpo.history)
    for expected, got in zip(grpo.history, zero.history):
        for key, value in comparable(expected).items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key
    for name, weight in grpo.weights.items():
        torch.testing.assert_close(zero.weights[name], weight, rtol=1e-6, atol=1e-9)
    # the same rollouts (same seed), with the skill term: another loss, other weights
    assert logged(opid, "reward")[0] == pytest.approx(logged(grpo, "reward")[0])
    assert logged(opid, "loss")[0] != pytest.approx(logged(grpo, "loss")[0], rel=1e-6, abs=1e-9)
    assert any(not torch.allclose(opid.weights[n], w, rtol=1e-6, atol=1e-9) for n, w in grpo.weights.items())
    # critical-first: every turn has a step skill here, so each turn is one step unit (2 per tool-calling row)
    assert logged(opid, "skill/step_rows_scored")[0] > 4 and logged(opid, "skill/rows_without_turn_skills")[0] == 0


def test_environment_factory_prompts_are_rebuilt_with_the_reset_text(tiny_model_dir, tmp_path):
    extractor = TurnSkills()
    tokenizer = tool_tokenizer(tiny_model_dir)
    model = scripted_model(tiny_model_dir, tokenizer, first_turn_asking("Count", tool_call("increment", step=2)))
    prompts = [f"Count up by {i}." for i in range(8)]
    trainer = OPIDTrainer(model=model, reward_funcs=counter_reward, args=opid_args(tmp_path, skill_routing="additive"),
                          train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts]),
                          processing_class=tokenizer, environment_factory=Counter, skill_extractor=extractor)
    recorder = Recorder(trainer)
    trainer.train()
    history = trainer.state.log_history[0]
    # every row's context was rebuilt exactly (else it would be counted and get no skill)
    assert history["skill/rows_without_turn_skills"] == 0 and history["skill/step_rows_scored"] > 0
    assert all(t.task.endswith("The counter starts at 0.") for t in extractor.seen)
    assert all(t.steps[0].action == 'increment({"step": 2})' and t.steps[1].observation == "2" for t in extractor.seen)
    episode_contexts = recorder.calls[0][0]
    text = tokenizer.decode(episode_contexts[0])
    assert text.index("The counter starts at 0.") < text.index(EPISODE_SKILL_TITLE)
    assert '"name": "increment"' in text  # the environment's tool schema, as TRL rendered it


def hand_built_conversation():
    assistant = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}]}
    tool = {"role": "tool", "name": "multiply", "content": "12"}
    final = {"role": "assistant", "content": "12"}
    # prompt [1, 2, 3]; turn 0 = [10, 11], tool result = [12], turn 1 = [13, 14]
    return split_conversation([{"role": "user", "content": "Multiply 3 by 4."}], [1, 2, 3], [10, 11, 12, 13, 14],
                              [1, 1, 0, 1, 1], [assistant, tool, final])


def fake_renderers(prompt_ids=(1, 2, 3), suffix=(12,)):
    """A prompt renders as ``prompt_ids`` (plus 90 when it holds a skill block); tool results as ``suffix``
    (plus 99 when their last one holds a skill block)."""

    def tokenize_prompt(row, messages):
        return list(prompt_ids) + ([90] if "skill" in messages[-1]["content"] else [])

    def tool_suffix_ids(messages):
        return list(suffix) + ([99] if "skill" in messages[-1]["content"] else [])

    return tokenize_prompt, tool_suffix_ids


def test_units_by_hand_and_rows_that_cannot_be_rebuilt_get_no_skill():
    from opid_trl.algorithms.routing import RoutedSkill
    from opid_trl.skills.conversation import conversation_skill_rows
    from opid_trl.skills.scoring import SkillScores

    c = hand_built_conversation()

    def describe(i):
        return {}

    rows, unusable = conversation_skill_rows([c, None], *fake_renderers(), 6, "cpu", describe)
    assert unusable == 1
    # critical-first: turn 0 gets the episode skill, turn 1 its step skill
    units = rows.units([[RoutedSkill(episode_skill="ep"), RoutedSkill(step_skill="st")], []])
    assert [(u.episode_skill, u.step_skill) for u in units.routed] == [("ep", None), (None, "st")]
    assert units.render(0, "ep", None) == [1, 2, 3, 90]  # the prompt with the block; the whole completion scored
    assert units.completion_ids.tolist() == [[10, 11, 12, 13, 14], [13, 14, 0, 0, 0]]
    assert units.completion_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]  # episode unit: turn 0 only
    assert units.render(1, None, "st") == [1, 2, 3, 10, 11, 12, 99]  # prompt, turn 0, the result with the block
    assert units.render(1, None, None) == [1, 2, 3, 10, 11, 12]  # without it: exactly what the policy saw
    episode = torch.full((2, 5), float("nan"))
    episode[0] = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    step = torch.full((2, 5), float("nan"))
    step[1, :2] = torch.tensor([-6.0, -7.0])
    back = units.to_rows(SkillScores(logps={"episode": episode, "step": step}))
    nan = float("nan")
    torch.testing.assert_close(back.logps["episode"], torch.tensor([[-1.0, -2.0, nan, nan, nan, nan], [nan] * 6]),
                               equal_nan=True)
    torch.testing.assert_close(back.logps["step"], torch.tensor([[nan, nan, nan, -6.0, -7.0, nan], [nan] * 6]),
                               equal_nan=True)
    assert back.scored_rows == [0]
    # a prompt or a tool result that re-renders differently: the row gets no skill, counted
    for renderers in (fake_renderers(prompt_ids=(1, 2, 4)), fake_renderers(suffix=(12, 5))):
        rows, unusable = conversation_skill_rows([c], *renderers, 6, "cpu", describe)
        units = rows.units([[RoutedSkill(episode_skill="ep"), RoutedSkill(step_skill="st")]])
        assert unusable == 1 and [u.episode_skill or u.step_skill for u in units.routed] == [None]  # a placeholder
        assert units.render(0, None, None) == [0] and units.to_rows(SkillScores()).scored_rows == []


def test_generation_is_a_collective_under_sharding_and_vllm_across_processes():
    from opid_trl.generation.tool_loop import generation_is_collective

    assert not generation_is_collective(1, "ZeRO-3", True, "server")  # one process: nothing to wait for
    assert generation_is_collective(2, "ZeRO-3", False, None) and generation_is_collective(8, "FSDP", False, None)
    assert generation_is_collective(2, None, True, "server")  # the server gathers every process's prompts
    assert not generation_is_collective(2, None, True, "colocate")  # one engine per process
    assert generation_is_collective(4, None, True, "colocate", tensor_parallel_size=2)
    assert not generation_is_collective(8, None, False, None)  # DDP with transformers: each process alone


ENVIRONMENT_REPLY = {"role": "user", "content": "Now say it again."}


def two_turn_rollout(prompts: list, trainer) -> dict[str, list]:
    """A custom rollout (TRL's `rollout_func`) of two turns: the policy answers, the environment replies
    as a user message, the policy answers again. Returns TRL's fields, `env_mask`, and `turn_messages`."""
    from opid_trl.assembly import environment_suffix_ids

    tokenizer = trainer.processing_class
    model = trainer.accelerator.unwrap_model(trainer.model)
    reply = environment_suffix_ids(trainer, [ENVIRONMENT_REPLY])

    def sample(ids: list[int]) -> list[int]:
        with torch.no_grad():
            output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=5, do_sample=True, pad_token_id=tokenizer.pad_token_id)
        return output[0, len(ids):].tolist() + [tokenizer.eos_token_id]

    out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "turn_messages": []}
    for prompt in prompts:
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
        first = sample(prompt_ids)
        second = sample(prompt_ids + first + reply)
        completion = first + reply + second
        out["prompt_ids"].append(prompt_ids)
        out["completion_ids"].append(completion)
        out["logprobs"].append([0.0] * len(completion))
        out["env_mask"].append([1] * len(first) + [0] * len(reply) + [1] * len(second))
        out["turn_messages"].append([{"role": "assistant", "content": tokenizer.decode(first, skip_special_tokens=True)},
                                     ENVIRONMENT_REPLY,
                                     {"role": "assistant", "content": tokenizer.decode(second, skip_special_tokens=True)}])
    return out


def test_a_rollout_func_returning_its_turns_gets_a_skill_per_turn(tiny_model_dir, tmp_path):
    from opid_trl import returns_turns

    def build(rollout_func, extractor=None, **overrides):
        return OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                           args=opid_args(tmp_path, skill_routing="additive", **overrides), train_dataset=tool_rows(),
                           processing_class=tool_tokenizer(tiny_model_dir), rollout_func=rollout_func,
                           skill_extractor=extractor)

    # unmarked: refused before any model loads, naming what to return
    with pytest.raises(ValueError, match="skill_extractor: .*env_mask and turn_messages.*returns_turns"):
        build(two_turn_rollout, TurnSkills())
    # marked, but without its turns: refused at the first batch, naming the missing field
    without = returns_turns(lambda prompts, trainer: {k: v for k, v in two_turn_rollout(prompts, trainer).items()
                                                      if k != "turn_messages"})
    with pytest.raises(ValueError, match="rollout_func: .* no turn_messages"):
        build(without, TurnSkills()).train()
    extractor = TurnSkills()
    trainer = build(returns_turns(two_turn_rollout), extractor)
    recorder = Recorder(trainer)
    trainer.train()
    history = trainer.state.log_history[0]
    assert history["skill/rows_without_turn_skills"] == 0
    assert [len(t.steps) for t in extractor.seen] == [2] * 4
    assert all(t.steps[1].observation == "Now say it again." for t in extractor.seen)
    (episode_contexts, _, _), (step_contexts, step_ids, step_mask) = recorder.calls
    assert len(episode_contexts) == 4 and len(step_contexts) == 8
    decode = trainer.processing_class.decode
    second_turn = decode(step_contexts[1])
    assert second_turn.rsplit("<|im_start|>user", 1)[1].startswith("\nNow say it again.")
    assert "Turn 1 advice." in second_turn.rsplit("<|im_start|>user", 1)[1]
    assert int(step_mask[1].sum()) == 6  # the second turn's 5 sampled tokens and its EOS, nothing else


def test_heatmap_records_of_a_conversation_leave_tool_results_unscored(tiny_model_dir, tmp_path):
    import json

    from opid_trl.reporting.heatmap import render_report, token_advantages

    trainer = tool_trainer(tiny_model_dir, tmp_path, TurnSkills(), skill_routing="additive", heatmap_rows=2)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "heatmaps" / "step-0-rank0.jsonl").read_text()
               .splitlines()]
    assert {r["kind"] for r in records} == {"episode", "step"} and len(records) == 4  # 2 rows x 2 kinds
    for record in records:
        assert len(record["tokens"]) == len(record["l_skill"]) == len(record["l_old"])
        text = "".join(record["tokens"])
        unscored = "".join(t for t, v in zip(record["tokens"], record["l_skill"]) if v is None)
        scored = "".join(t for t, v in zip(record["tokens"], record["l_skill"]) if v is not None)
        # the tool result (and the next turn's header) is unscored, both assistant turns are scored
        assert "<tool_response>" in unscored and "<tool_response>" not in scored and "<tool_call>" in scored
        assert text.index("<tool_call>") < text.index("<tool_response>")
        assert sum(v == v for v in token_advantages(record)) == sum(v is not None for v in record["l_skill"])
    report = render_report(records)  # every token is rendered, the unscored ones grey
    assert report.count('<span class="tok') >= sum(len(r["tokens"]) for r in records)


@pytest.mark.parametrize("setting", [dict(per_device_train_batch_size=12, num_generations=4),
                                     dict(steps_per_generation=2)], ids=["chunked-loss", "unaligned"])
def test_turn_skills_reach_the_chunked_loss_and_the_unaligned_path(tiny_model_dir, tmp_path, setting):
    """12 rows per micro-step (above `max_rows_per_forward`: the chunked loss completes A_OPID from its
    own no-grad pass), and two micro-steps per generation (l_old from TRL's own old-policy pass, A_OPID
    completed at scoring time)."""
    trainer = tool_trainer(tiny_model_dir, tmp_path, TurnSkills(), **setting)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["skill/adv_abs_max"] > 0 for h in logged if "skill/adv_abs_max" in h)
    assert any("skill/adv_abs_max" in h for h in logged)
    assert logged[0]["skill/rows_without_turn_skills"] == 0 and logged[0]["skill/step_rows_scored"] > 0
