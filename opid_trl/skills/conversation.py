"""A TRL agent rollout (`tools=`, `environment_factory=`, or a `rollout_func` that returns its
turns) as the skill stage sees it: one conversation per row, one step per assistant turn, one
skill per turn.

TRL rolls such an episode out as one completion: the assistant turns and the tool results in
between, concatenated token by token (``completion_ids``), with ``tool_mask`` 0 on the tool
results. Nothing of that is forked here: after TRL's rollout, each row becomes

- a `Trajectory` (task = the text of the prompt's last message as the policy saw it, `reset()`'s
  text included; step j = assistant turn j, whose observation is what the model saw last before
  it: the task for the first turn, the tool results for a later one; the outcome = the rollout's
  reward, given to the last turn), so every skill extractor works on it unchanged;
- and its turns' *scoring units*, after routing (critical-first and the others, per turn, as for
  step rows):

  - **the episode skill**: one unit per row, the whole completion scored after the prompt with
    the skill block appended to its last message (after the task statement), values kept on
    the turns routed to it;
  - **a step skill**: one unit per turn routed to it, scoring only that turn, after the prompt,
    the completion up to the message right before the turn, and that message with the skill
    block appended: the last prompt message for the first turn, the last tool result for a
    later one. That message is what the model read last before the turn, so the block sits where
    a step's skill sits in a step row (right before the answer), and it is never scored itself:
    it lies in the prompt or in a tool result (``tool_mask`` 0).

The scored tokens are always the sampled ids (a unit's completion is sliced from
``completion_ids``, never re-tokenized); only the context before them changes. A context is
rebuilt with the same chat-template calls TRL made (its prompt tokenization and its tool-suffix
tokens); a row whose rebuilt context *without* a skill is not exactly the context the policy saw
(a chat template that renders differently in parts) gets no skill, and is counted.

Shapes: B rows, T completion tokens, U units, T_u unit tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from opid_trl.algorithms.routing import RoutedSkill, inject
from opid_trl.skills.scoring import SkillScores
from opid_trl.skills.single_turn import unpadded
from opid_trl.skills.stage import ScoringUnits, SkillRows
from opid_trl.trajectory import StepRecord, Trajectory

#: What a `rollout_func` returns, besides TRL's fields, for per-turn skills: ``env_mask`` (TRL's own key:
#: per row, 1 on the tokens of the assistant turns, 0 on the environment's) and ``turn_messages`` (per
#: row, the completion as chat messages in order: an assistant message per turn, and the messages the
#: environment answered with in between, e.g. ``{"role": "tool", "name": ..., "content": ...}`` or a
#: user message).
TURN_FIELDS = ("env_mask", "turn_messages")


def returns_turns(rollout_func: Callable) -> Callable:
    """Mark a TRL ``rollout_func`` as returning `TURN_FIELDS`, so that `OPIDTrainer` with a skill
    extractor scores a skill per assistant turn of its rollouts (without the mark, a skill extractor
    with a ``rollout_func`` is refused: a single skill for a whole multi-turn completion would be
    scored across the environment's tokens)."""
    rollout_func.opid_returns_turns = True
    return rollout_func


def missing_turn_fields(output: dict[str, Any], env_mask: Any) -> list[str]:
    """The `TURN_FIELDS` a marked ``rollout_func``'s output lacks (TRL has popped ``env_mask`` already)."""
    return [name for name, present in (("env_mask", env_mask is not None), ("turn_messages", "turn_messages" in output))
            if not present]


#: (the row, prompt messages) -> their prompt token ids, rendered as TRL rendered that row's prompt.
TokenizeRowPrompt = Callable[[int, list[dict]], list[int]]
#: Tool messages -> the tokens TRL appends after an assistant turn for them (`_get_tool_suffix_ids`).
ToolSuffixIds = Callable[[list[dict]], list[int]]


def turn_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of the runs of 1 in ``mask``: the assistant turns of a completion
    whose ``mask`` is ``completion_mask * tool_mask`` (0 on tool results and padding)."""
    spans, start = [], None
    for position, value in enumerate(list(mask) + [0]):
        if value and start is None:
            start = position
        elif not value and start is not None:
            spans.append((start, position))
            start = None
    return spans


@dataclass
class Conversation:
    """One row of a TRL agent rollout, split into turns."""

    #: The messages the policy saw before its first turn (`reset()`'s text included).
    prompt: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int]
    #: Per assistant turn: its ``[start, end)`` token span in ``completion_ids``.
    spans: list[tuple[int, int]]
    #: Per assistant turn: the assistant message TRL parsed from it.
    turns: list[dict]
    #: Per assistant turn: the tool messages right before it (empty for the first turn).
    tool_results: list[list[dict]] = field(default_factory=list)

    @property
    def task(self) -> str:
        """The text of the prompt's last message: the task as the policy read it."""
        return message_text(self.prompt[-1]) if self.prompt else ""


def message_text(message: dict) -> str:
    """A message's text (the text parts of a multimodal content list)."""
    content = message.get("content", "")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def split_conversation(prompt: list[dict], prompt_ids: list[int], completion_ids: list[int], loss_mask: Sequence[int],
                       messages: Sequence[dict]) -> Conversation | None:
    """``messages`` (TRL's completion: assistant, tool..., assistant, ...) matched to the assistant
    turns' token spans; None when they do not match one to one (then the row gets no skill)."""
    spans = turn_spans(loss_mask)
    turns: list[dict] = []
    tool_results: list[list[dict]] = []
    pending: list[dict] = []
    for message in messages:
        if message.get("role") == "assistant":
            turns.append(message)
            tool_results.append(pending)
            pending = []
        else:
            pending.append(message)
    if not spans or len(spans) != len(turns) or tool_results[0]:
        return None
    return Conversation(prompt, list(prompt_ids), list(completion_ids), spans, turns, tool_results)


def tool_call_text(message: dict) -> str | None:
    """The tool calls of an assistant message as one action (``name({...})``, joined by ``; ``),
    or None for a turn that calls no tool (a final answer)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        shown = arguments if isinstance(arguments, str) else json.dumps(arguments, sort_keys=True, default=str)
        calls.append(f"{function.get('name', '?')}({shown})")
    return "; ".join(calls) or None


def conversation_trajectory(conversation: Conversation, decode: Callable[[list[int]], str], trajectory_id: str,
                            group_id: int, reward: float, success_threshold: float, gamma: float) -> Trajectory:
    """The `Trajectory` of one conversation: a step per assistant turn, the reward on the last one."""
    steps = []
    for j, ((start, end), message) in enumerate(zip(conversation.spans, conversation.turns)):
        observation = conversation.task if j == 0 else "\n".join(
            message_text(m) for m in conversation.tool_results[j])
        last = j == len(conversation.spans) - 1
        steps.append(StepRecord(index=j, observation=observation, response=decode(conversation.completion_ids[start:end]),
                                action=tool_call_text(message), reward=reward if last else 0.0))
    trajectory = Trajectory(trajectory_id=trajectory_id, group_id=group_id, task=conversation.task, steps=steps,
                            outcome=reward, success=reward >= success_threshold)
    trajectory.fill_discounted_returns(gamma)
    return trajectory


def with_block(message: dict, episode_skill: str | None, step_skill: str | None) -> dict:
    """``message`` with the skill block(s) appended to its text (`routing.inject`, no anchor)."""
    content = message.get("content", "")
    if isinstance(content, list):
        return {**message, "content": [*content, {"type": "text",
                                                  "text": inject("", episode_skill, step_skill, None, None)}]}
    return {**message, "content": inject(message_text(message), episode_skill, step_skill, None, None)}


def with_prompt_block(prompt: list[dict], episode_skill: str | None, step_skill: str | None) -> list[dict]:
    """The prompt messages with the skill block(s) appended to the last one (after the task)."""
    return prompt[:-1] + [with_block(prompt[-1], episode_skill, step_skill)] if prompt else prompt


@dataclass
class _Unit:
    """One scoring unit: a row, the turn it scores (None: the episode unit) and the spans it keeps."""

    row: int
    turn: int | None
    routed: RoutedSkill
    spans: list[tuple[int, int]]


def conversation_skill_rows(conversations: Sequence[Conversation | None], tokenize_prompt: TokenizeRowPrompt,
                            tool_suffix_ids: ToolSuffixIds, width: int, device: torch.device | str,
                            describe: Callable[[int], dict[str, Any]]) -> tuple[SkillRows, int]:
    """`SkillRows` of a TRL agent batch, scored per turn (see the module docstring), and how many
    rows get no skill because their context cannot be rebuilt exactly (or their turns not found)."""
    usable = [c if c is not None and _rebuilds(i, c, tokenize_prompt, tool_suffix_ids) else None
              for i, c in enumerate(conversations)]
    unusable = sum(c is None for c in usable)

    def row_routing(per_episode: list[list[RoutedSkill]]) -> list[RoutedSkill]:
        summary = []
        for c, routes in zip(usable, per_episode):
            routes = routes if c is not None else []
            episode = next((r.episode_skill for r in routes if r.episode_skill), None)
            steps = [r.step_skill for r in routes if r.step_skill]
            summary.append(RoutedSkill(episode_skill=episode, step_skill="\n".join(steps) if steps else None))
        return summary

    def render(i: int, episode_skill: str | None, step_skill: str | None) -> list[dict]:
        return with_prompt_block(conversations[i].prompt if conversations[i] is not None else [], episode_skill,
                                 step_skill)

    def units(per_episode: list[list[RoutedSkill]]) -> ScoringUnits:
        chosen = _units(usable, per_episode)
        return _scoring_units(chosen, usable, tokenize_prompt, tool_suffix_ids, width, device)

    rows = SkillRows(row_routing, render, lambda prompts: [[] for _ in prompts], describe, units=units)
    return rows, unusable


def _rebuilds(row: int, c: Conversation, tokenize_prompt: TokenizeRowPrompt, tool_suffix_ids: ToolSuffixIds) -> bool:
    """Whether the contexts the units rebuild, without a skill, are exactly the tokens the policy saw."""
    if tokenize_prompt(row, c.prompt) != c.prompt_ids:
        return False
    for j in range(1, len(c.spans)):
        suffix = c.completion_ids[c.spans[j - 1][1] : c.spans[j][0]]
        if not c.tool_results[j] or tool_suffix_ids(c.tool_results[j]) != suffix:
            return False
    return True


def _units(conversations: Sequence[Conversation | None], per_episode: list[list[RoutedSkill]]) -> list[_Unit]:
    """Episode units (one per row with an episode-routed turn), then step units (one per step-routed turn)."""
    episode_units, step_units = [], []
    for i, (c, routes) in enumerate(zip(conversations, per_episode)):
        if c is None:
            continue
        episode_turns = [j for j, r in enumerate(routes) if r.episode_skill]
        if episode_turns:
            skill = routes[episode_turns[0]].episode_skill
            episode_units.append(_Unit(i, None, RoutedSkill(episode_skill=skill), [c.spans[j] for j in episode_turns]))
        step_units += [_Unit(i, j, RoutedSkill(step_skill=r.step_skill), [c.spans[j]])
                       for j, r in enumerate(routes) if r.step_skill]
    return episode_units + step_units


def _scoring_units(chosen: list[_Unit], conversations: Sequence[Conversation | None], tokenize_prompt: TokenizeRowPrompt,
                   tool_suffix_ids: ToolSuffixIds, width: int, device: torch.device | str) -> ScoringUnits:
    """The units' contexts, completions (U, T_u) and the way back to the rows' (B, T) layout. A
    process without a unit scores a placeholder, so that every process runs the same passes."""
    if not chosen:
        chosen = [_Unit(-1, None, RoutedSkill(), [])]
    completions = []
    for unit in chosen:
        c = conversations[unit.row] if unit.row >= 0 else None
        completions.append([0] if c is None else c.completion_ids if unit.turn is None else
                           c.completion_ids[slice(*unit.spans[0])])
    unit_width = max([len(ids) for ids in completions] + [1])
    ids = torch.zeros(len(chosen), unit_width, dtype=torch.long, device=device)
    mask = torch.zeros(len(chosen), unit_width, dtype=torch.long, device=device)
    for u, (unit, tokens) in enumerate(zip(chosen, completions)):
        ids[u, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        for start, end in unit.spans if unit.turn is None else [(0, len(tokens))]:
            mask[u, start:end] = 1

    def render(u: int, episode_skill: str | None, step_skill: str | None) -> list[int]:
        unit = chosen[u]
        c = conversations[unit.row] if unit.row >= 0 else None
        if c is None:
            return [0]
        if unit.turn is None or unit.turn == 0:
            return tokenize_prompt(unit.row, with_prompt_block(c.prompt, episode_skill, step_skill))
        start = c.spans[unit.turn - 1][1]
        results = c.tool_results[unit.turn]
        suffix = tool_suffix_ids(results[:-1] + [with_block(results[-1], episode_skill, step_skill)])
        return c.prompt_ids + c.completion_ids[:start] + suffix

    def to_rows(scores: SkillScores) -> SkillScores:
        rows = SkillScores(rows_scored=dict(scores.rows_scored), over_budget=dict(scores.over_budget))
        scored: set[int] = set()
        for kind, values in scores.logps.items():
            full = torch.full((len(conversations), width), float("nan"), dtype=torch.float32, device=values.device)
            for u, unit in enumerate(chosen):
                if unit.row < 0 or torch.isnan(values[u]).all():  # the placeholder, or not in this kind's pass
                    continue
                offset = 0 if unit.turn is None else unit.spans[0][0]
                for start, end in unit.spans:
                    full[unit.row, start:end] = values[u, start - offset : end - offset]
                scored.add(unit.row)
            rows.logps[kind] = full
        rows.scored_rows = sorted(scored)
        return rows

    return ScoringUnits([unit.routed for unit in chosen], render, ids, mask, to_rows)


def conversation_skill_inputs(prompts: Sequence[list[dict]], messages: Sequence[Sequence[dict]],
                              batch: dict[str, torch.Tensor], rewards: Sequence[float], first_index: int,
                              trajectory_id: Callable[[int], str], num_generations: int, success_threshold: float,
                              gamma: float, decode: Callable[[list[int]], str], tokenize_prompt: TokenizeRowPrompt,
                              tool_suffix_ids: ToolSuffixIds) -> tuple[list[Trajectory], SkillRows, int]:
    """The trajectories for the skill extractor, the `SkillRows` (scored per turn) and the count of
    rows without a skill, of this process's part of a TRL agent batch.

    ``prompts``: the messages the policy saw (`reset()`'s text included); ``messages``: TRL's
    completion messages per row; ``batch``: GRPO's batch (with ``tool_mask``); ``rewards``: this
    process's rewards; ``first_index``: the global index of its first row.
    """
    completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
    loss_mask = (completion_mask * batch["tool_mask"]) if "tool_mask" in batch else completion_mask
    prompt_ids = unpadded(batch["prompt_ids"], batch["prompt_mask"])
    completions = unpadded(completion_ids, completion_mask)
    conversations = [split_conversation(list(p), ids, tokens, m[: len(tokens)].tolist(), msgs)
                     for p, ids, tokens, m, msgs in zip(prompts, prompt_ids, completions, loss_mask.cpu(), messages)]
    trajectories = []
    for k, (c, tokens, reward) in enumerate(zip(conversations, completions, rewards)):
        index = first_index + k
        whole = c or Conversation(list(prompts[k]), prompt_ids[k], tokens, [(0, len(tokens))], [{}], [[]])
        trajectories.append(conversation_trajectory(whole, decode, trajectory_id(index), index // num_generations,
                                                    float(reward), success_threshold, gamma))

    def describe(i: int) -> dict[str, Any]:
        t = trajectories[i]
        return {"trajectory_id": t.trajectory_id, "step_index": 0, "episode_return": t.outcome,
                "success": t.success, "task_type": t.task_type}

    rows, unusable = conversation_skill_rows(conversations, tokenize_prompt, tool_suffix_ids, completion_ids.size(1),
                                             completion_ids.device, describe)
    return trajectories, rows, unusable
