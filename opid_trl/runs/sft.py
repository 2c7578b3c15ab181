"""SFT warm start: expert trajectories rendered with the RL prompt template, trained with TRL's
`SFTTrainer`, so that a small model starts RL from a policy that follows the output format.

Each expert step becomes one prompt/completion pair, exactly as the RL rollout would render it
(same environment template, same history window), with a short reasoning before the action.

:func:`skill_conditioned_examples` makes a warm start that can *use* a skill, which OPID's skill
advantage presupposes (a policy that reads the skill block shifts its log-probs towards what the
skill says; one that ignores it gives A_skill ~ 0 whatever the skill). Its episodes are played by
an exploring behaviour policy (the expert, or a random admissible action with probability
``explore_rate``); the run's skill extractor reads each finished episode in hindsight, as in RL,
and a share ``skill_share`` of the steps shows the routed skill in the prompt (injected exactly as
OPID's re-scoring injects it) with the expert's answer as the target, while the other steps show
no skill and the behaviour's own answer. Without a skill the policy so stays imperfect (room to
learn), and with one it learns to act on it. Every method of a study starts from the same warm
start, so the comparison stays fair.

That alone teaches a shortcut: "a skill block is there, so act as the expert", whatever the block
says (measured: skills of *other* tasks, the `shuffled` placebo, scored almost as well as the
right ones). ``placebo_share`` of the skill-shown steps therefore show a skill written for
another task's episode, with the behaviour's own answer as target: only a skill that is about
this episode predicts the expert's answer, so the policy must read it.

Both still let "an on-task skill block: act as the expert" pay off, whatever the block says
(measured: the shuffled placebo scored 0.66 against 0.71 for the right skills). ``follow_share``
of the steps therefore show a step skill that names one admissible action drawn at random
(`FOLLOW_SKILL_TEMPLATE`) with an answer that takes exactly that action as target: the same block
now asks for the expert's action or another one, so only what it says predicts the answer. This
is the in-context instruction following a large instruction-tuned policy brings, made explicit
for a small model; it also teaches the policy to follow a wrong skill, so it is a warm start for
measuring and studying the skill signal, not a recipe for a deployed agent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from environments.base import AgentEnvironment, HistoryEntry, PromptView
from opid_trl.algorithms.routing import RoutedSkill, inject, route_skills
from opid_trl.trajectory import EpisodeSkills, StepRecord, Trajectory


def expert_examples(env_factory: Callable[[], AgentEnvironment], task_rows: Iterable[Mapping[str, Any]],
                    history_length: int, max_turns: int) -> tuple[list[dict], dict[str, float]]:
    """Prompt/completion pairs from expert episodes, and the expert's success rate.

    The completion is the environment's `expert_response()`. Episodes where the environment knows
    no expert action end there; a failed expert episode is
    dropped (its steps may teach mistakes).
    """
    env = env_factory()
    examples, won, played = [], 0, 0
    for row in task_rows:
        observation = env.reset(row)
        history: list[HistoryEntry] = []
        episode: list[dict] = []
        success = False
        for turn in range(max_turns):
            response = env.expert_response()
            if response is None:
                break
            action, _ = env.parse_action(response)
            view = PromptView(env.task_description, turn, observation, tuple(env.admissible_actions), tuple(history))
            episode.append({"prompt": [{"role": "user", "content": env.render_prompt(view, history_length)}],
                            "completion": [{"role": "assistant", "content": response}]})
            result = env.step(response)
            history.append(HistoryEntry(observation, action or response))
            observation = result.observation
            if result.done:
                success = result.won
                break
        played += 1
        if success:
            won += 1
            examples.extend(episode)
    env.close()
    return examples, {"expert_success_rate": won / max(played, 1), "examples": float(len(examples))}


#: The step skill of a follow example (``follow_share``): names one admissible action, says no more.
FOLLOW_SKILL_TEMPLATE = "Here take '{action}' now."


def _example(prompt: str, response: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": response}]}


def _acting_on(env: AgentEnvironment, expert: str, action: str) -> str:
    """The expert's answer with ``action`` in place of the expert's action (same reasoning and format,
    so only the action differs and the answer stays well-formed)."""
    expert_action = env.parse_action(expert)[0]
    return expert.replace(expert_action, action) if expert_action else expert


def _behaviour_response(env: AgentEnvironment, expert: str, rng: random.Random, explore_rate: float) -> str:
    """The expert's answer, or with probability ``explore_rate`` the same answer acting on a random
    other admissible action."""
    expert_action = env.parse_action(expert)[0]
    others = [a for a in env.admissible_actions if a != expert_action]
    if not others or not expert_action or rng.random() >= explore_rate:
        return expert
    return _acting_on(env, expert, rng.choice(others))


@dataclass
class _BehaviourEpisode:
    """One episode played by the behaviour policy, step by step: the plain prompt, the expert's answer
    there, the admissible actions there, and the step played; and whether it was won."""

    prompts: list[str] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    choices: list[tuple[str, ...]] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    won: bool = False


def _play_behaviour(env: AgentEnvironment, row: Mapping[str, Any], rng: random.Random, explore_rate: float,
                    history_length: int, max_turns: int, stats: dict[str, float]) -> _BehaviourEpisode:
    """One episode of ``row`` played by the behaviour policy (``stats["explored_steps"]`` counted)."""
    observation = env.reset(row)
    history: list[HistoryEntry] = []
    episode = _BehaviourEpisode()
    for turn in range(max_turns):
        expert = env.expert_response()
        if expert is None:
            break
        behaviour = _behaviour_response(env, expert, rng, explore_rate)
        view = PromptView(env.task_description, turn, observation, tuple(env.admissible_actions), tuple(history))
        episode.prompts.append(env.render_prompt(view, history_length))
        episode.experts.append(expert)
        episode.choices.append(tuple(env.admissible_actions))
        result = env.step(behaviour)
        episode.steps.append(StepRecord(index=turn, observation=observation, response=behaviour, action=result.action,
                                        action_valid=result.action_valid, reward=result.reward))
        stats["explored_steps"] += behaviour != expert
        history.append(HistoryEntry(observation, result.history_text or result.action or behaviour))
        observation = result.observation
        if result.done:
            episode.won = result.won
            break
    return episode


@dataclass
class _Mix:
    """The shares of `skill_conditioned_examples` and the random source they draw from."""

    rng: random.Random
    skill_share: float
    placebo_share: float
    follow_share: float


def _step_example(env: AgentEnvironment, episode: _BehaviourEpisode, t: int, skill: RoutedSkill,
                  others: Sequence[Sequence[RoutedSkill]], mix: _Mix, stats: dict[str, float]) -> dict:
    """The example of step ``t``: a follow example, the routed skill with the expert's answer, a
    placebo skill with the behaviour's answer, or the plain prompt with the behaviour's answer."""
    prompt, played = episode.prompts[t], episode.steps[t].response
    anchor, task = env.instruction_anchor, env.task_description
    # no draw at follow_share 0, so that warm starts without follow examples keep their data
    if (mix.follow_share > 0 and episode.choices[t] and env.parse_action(episode.experts[t])[0]
            and mix.rng.random() < mix.follow_share):
        named = mix.rng.choice(episode.choices[t])
        stats["with_follow"] += 1
        return _example(inject(prompt, None, FOLLOW_SKILL_TEMPLATE.format(action=named), task=task, anchor=anchor),
                        _acting_on(env, episode.experts[t], named))
    if not (skill.episode_skill or skill.step_skill) or mix.rng.random() >= mix.skill_share:
        return _example(prompt, played)
    target = episode.experts[t]
    if others and mix.rng.random() < mix.placebo_share:
        donor = mix.rng.choice(others)
        skill, target = donor[min(t, len(donor) - 1)], played
        stats["with_placebo"] += 1
    else:
        stats["with_skill"] += 1
    return _example(inject(prompt, skill.episode_skill, skill.step_skill, task=task, anchor=anchor), target)


def skill_conditioned_examples(env_factory: Callable[[], AgentEnvironment], task_rows: Iterable[Mapping[str, Any]],
                               history_length: int, max_turns: int,
                               extractor: Callable[[Sequence[Trajectory]], Sequence[EpisodeSkills | None]],
                               explore_rate: float, skill_share: float, seed: int = 0,
                               routing: str = "critical_first", placebo_share: float = 0.0,
                               follow_share: float = 0.0) -> tuple[list[dict], dict[str, float]]:
    """Prompt/completion pairs that teach a policy to act on a hindsight skill (see the module docstring).

    Each row is played once by the behaviour policy up to ``max_turns`` steps (won or not: a failure's
    avoidance rules are skills too). Per step, with probability ``follow_share``: a step skill naming
    a random admissible action and an answer taking it; else with probability ``skill_share``: the
    prompt with the step's routed skill and the expert's answer; otherwise the plain prompt and the
    behaviour's answer. Environments without admissible actions explore and follow nothing (the
    behaviour is the expert). With probability ``placebo_share`` a skill-shown step shows instead
    the skill routed to the same step of an earlier episode of another task (its last step when
    shorter) and keeps the behaviour's answer.
    """
    env = env_factory()
    mix = _Mix(random.Random(seed), skill_share, placebo_share, follow_share)
    examples: list[dict] = []
    stats = {"episodes": 0.0, "won": 0.0, "examples": 0.0, "with_skill": 0.0, "explored_steps": 0.0,
             "with_placebo": 0.0, "with_follow": 0.0}
    earlier: list[tuple[str, list[RoutedSkill]]] = []  # (task, routed skills) of the episodes played so far
    for row in task_rows:
        episode = _play_behaviour(env, row, mix.rng, explore_rate, history_length, max_turns, stats)
        if not episode.steps:
            continue
        trajectory = Trajectory(f"sft-{stats['episodes']:.0f}", 0, env.task_description, episode.steps,
                                sum(s.reward for s in episode.steps), episode.won, task_type=env.task_type,
                                response_format=env.response_format, response_example=env.response_example)
        skills = list(extractor([trajectory]))[0]
        routed = route_skills(None if skills is None or skills.failed else skills, len(episode.steps), routing)
        others = [r for task, r in earlier
                  if task != env.task_description and any(x.episode_skill or x.step_skill for x in r)]
        examples.extend(_step_example(env, episode, t, routed[t], others, mix, stats) for t in range(len(routed)))
        earlier.append((env.task_description, routed))
        stats["episodes"] += 1
        stats["won"] += episode.won
    env.close()
    stats["examples"] = float(len(examples))
    return examples, stats


def run_sft(model_path: str, examples: list[dict], output_dir: str | Path, epochs: float = 2.0,
            learning_rate: float = 5e-4, batch_size: int = 8, max_length: int = 1024, seed: int = 0,
            use_cpu: bool = False, bf16: bool = False, report_to: list[str] | None = None) -> str:
    """Train on ``examples`` with `SFTTrainer` (loss on the completions only); returns the model folder."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("sft: no expert examples (does the environment implement expert_action()?)")
    output_dir = str(output_dir)
    config = SFTConfig(output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
                       per_device_train_batch_size=batch_size, max_length=max_length, seed=seed,
                       use_cpu=use_cpu, bf16=bf16, logging_steps=5, save_strategy="no", report_to=report_to or [],
                       completion_only_loss=True, lr_scheduler_type="cosine", warmup_steps=0.1)
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=Dataset.from_list(examples))
    trainer.train()
    trainer.save_model(output_dir)
    trainer.processing_class.save_pretrained(output_dir)
    return output_dir
