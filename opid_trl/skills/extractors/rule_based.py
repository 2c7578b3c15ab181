"""The offline default skill extractor: skills from the trajectory alone, no LLM, no privileged state.

It reads only what the agent saw and did (observations, actions, validity, rewards), so its
skills are honest hindsight, and it is deterministic. A skill is pasted into the prompt of a step
the policy already played, and OPID rewards the tokens it sampled by how much likelier the skill
makes them: so a skill must say what a reader who knows how the episode ended would say *at that
state*, making the good action likelier and the bad one less likely. Every rule below follows
from that, and none knows any environment: a *state* is the observation text the step was played
in (whitespace-collapsed), and a step's *result* is the next step's observation.

- A success gives its **workflow**: the actions of the solution path, with their counts and order
  ("go east (3 times) -> take key"). The path is the trajectory with its loops cut: when a state
  recurs, the steps between its first and its last visit led back to where the agent already was,
  so they are dropped and the last visit's action is the one that led on to success. Repeats are
  counted, never collapsed into one: a corridor walk needs every one of its steps.
- Success step skills: the rewarded steps ("take X now"); the **detours** (steps the loop cut
  dropped) at a state the path goes through, told the path's action there; the first ill-formed
  answer and the first well-formed one after it, shown a well-formed answer.
- A failure gives avoidance rules, each fired only by what the observations prove: ill-formed
  answers; an action repeated while it **changed nothing** (its result equals its state: walking
  down a corridor repeats "go east" and changes the room every time, so it is never flagged);
  going back and forth between two actions **when the state really returned**; a stretch of
  actions in a row that changed nothing. Failure step skills: every ill-formed answer, every
  action that changed nothing, and every move that led back to a state already left (only the
  first time it is tried from that state: trying it again after it first led somewhere new is
  not a loop). A failure without such a mistake gets a generic episode rule and no step skill:
  a step the extractor cannot judge is better left to the episode skill than marked wrongly.

Observations are only a proxy of the state: a message ("Nothing happens.", "You take the cup.")
or a view that does not show what the agent carries can make two states read alike, or one state
read as two. The rules then err; that is why they mark only what the texts show and leave a step
they cannot judge unmarked (the episode skill covers it).

Format advice shows a concrete well-formed answer in the environment's own format
(``Trajectory.response_example``, e.g. ``<think>...</think><search>q</search>`` for search QA),
with the action that was right at that state in hindsight: an abstract description of the
format made the ill-formed answer *likelier*. An ill-formed answer does not move the game (the
observation after it is the environment's complaint, not a new state), so the state of the answer
after it is the state it was given in, and the actions the agent then played there are at hand:
in a success the path's action, in a failure the first one not found futile or looping (else the
first one). An ill-formed answer at a state where no action was ever played gets no example.

``EpisodeSkills.meta["rules"]`` names the rule behind the episode skill (``success_workflow``,
``failure_rules``, ``failure_generic``) and behind each kept step skill, keyed by step index
(``decisive``, ``detour``, ``format``, ``no_progress``, ``loop``), so that diagnostics can group
the skill signal by rule.

Actions and tasks are untrusted text (a policy can emit a megabyte of output or an injected
instruction), and these skills are pasted into the policy's prompt: they are quoted only as
short one-line excerpts (`ACTION_EXCERPT_CHARS`, `TASK_EXCERPT_CHARS`), at most
`MAX_REPEAT_RULES` repetition rules are listed, and a long workflow loses its middle, so the
episode skill stays within `MAX_EPISODE_SKILL_CHARS` without the final cap cutting its end.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from environments.base import THINK_ACTION_RESPONSE_EXAMPLE, THINK_ACTION_RESPONSE_FORMAT
from opid_trl.skills.extractors.protocol import ExtractorContext, SkillExtractor
from opid_trl.trajectory import MAX_EPISODE_SKILL_CHARS, EpisodeSkills, StepRecord, Trajectory, clip_skill

#: Most workflow entries (an action with its count) shown; the middle ones give way first.
MAX_WORKFLOW_ACTIONS = 12
#: Longest excerpt of one action quoted in a skill.
ACTION_EXCERPT_CHARS = 60
#: Longest excerpt of the task statement quoted in a skill.
TASK_EXCERPT_CHARS = 160
#: At most this many "do not repeat" rules (the most futile actions) in one episode skill.
MAX_REPEAT_RULES = 3

#: A step skill in the making: (the name of the rule that wrote it, its text).
_Mark = tuple[str, str]


def _quote(action: str) -> str:
    """A short one-line excerpt of ``action`` for quoting inside a skill."""
    return clip_skill(action, ACTION_EXCERPT_CHARS)


def _entry(action: str, count: int) -> str:
    """One workflow entry: the action, and how many times in a row when more than once."""
    return _quote(action) if count == 1 else f"{_quote(action)} ({count} times)"


def _fit_workflow(prefix: str, workflow: Sequence[tuple[str, int]], suffix: str) -> str:
    """``prefix + workflow + suffix`` with at most `MAX_WORKFLOW_ACTIONS` entries, within
    `MAX_EPISODE_SKILL_CHARS` if at all possible.

    The first and last entries (how the task starts and what finishes it) are the most telling,
    so the middle ones give way to an ``...``; the final `clip_skill` cap then does not cut the advice.
    """
    entries = [_entry(action, count) for action, count in workflow]
    text = prefix + suffix.lstrip(". ")
    for keep in range(min(len(entries), MAX_WORKFLOW_ACTIONS), 0, -1):
        shown = entries if keep == len(entries) else (
            entries[: (keep + 1) // 2] + ["..."] + (entries[len(entries) - keep // 2 :] if keep // 2 else []))
        text = prefix + " -> ".join(shown) + suffix
        if len(text) <= MAX_EPISODE_SKILL_CHARS:
            break
    return text


def _run_length(actions: Sequence[str]) -> list[tuple[str, int]]:
    """Successive repeats of one action as one ``(action, count)`` entry, order kept."""
    runs: list[tuple[str, int]] = []
    for action in actions:
        if runs and runs[-1][0] == action:
            runs[-1] = (action, runs[-1][1] + 1)
        else:
            runs.append((action, 1))
    return runs


def _acted(step: StepRecord) -> bool:
    """Whether ``step`` was a well-formed answer with an action: the only kind that moves the game."""
    return step.action_valid and bool(step.action)


def _states(steps: Sequence[StepRecord]) -> list[str]:
    """The state each step was played in: its observation, whitespace collapsed, except after an
    answer that did not act (ill-formed): that one left the game where it was, so the state carries
    over (the observation after it is the environment's complaint, the same for every state)."""
    states: list[str] = []
    for t, step in enumerate(steps):
        states.append(states[-1] if t and not _acted(steps[t - 1]) else " ".join(step.observation.split()))
    return states


def _solution_path(steps: Sequence[StepRecord], states: Sequence[str]) -> list[int]:
    """Indices of the acting steps left when every loop is cut: when a state recurs, the steps
    since its earlier visit led back to it, so they go, and the last visit stays."""
    path: list[int] = []
    for t, step in enumerate(steps):
        if not _acted(step):
            continue
        earlier = next((p for p, s in enumerate(path) if states[s] == states[t]), None)
        if earlier is not None:
            del path[earlier:]
        path.append(t)
    return path


def _judge_moves(steps: Sequence[StepRecord], states: Sequence[str]) -> dict[int, str]:
    """``no_progress`` for an acting step whose result is its own state; ``loop`` for a move whose
    result is a state seen before, the first time that move is tried from that state (a move that
    first led somewhere new is not a loop when it later leads to a place already seen). The last
    step's result is not recorded, so it is never judged."""
    verdicts: dict[int, str] = {}
    seen: set[str] = set()
    tried: set[tuple[str, str]] = set()
    for t, step in enumerate(steps[:-1]):
        seen.add(states[t])
        if not _acted(step):
            continue
        result, move = states[t + 1], (states[t], step.action)
        if result == states[t]:
            verdicts[t] = "no_progress"
        elif result in seen and move not in tried:
            verdicts[t] = "loop"
        tried.add(move)
    return verdicts


def _hindsight_action(t: int, steps: Sequence[StepRecord], states: Sequence[str], bad: Collection[int]) -> str | None:
    """The action to show at step ``t``'s state: the first one the agent played there from ``t`` on
    that is not in ``bad``, else the first one played there (``None`` if none was). With the
    detours as ``bad``, that is the solution path's action at a state on the path."""
    there = [u for u in range(t, len(steps)) if _acted(steps[u]) and states[u] == states[t]]
    chosen = next((u for u in there if u not in bad), there[0] if there else None)
    return None if chosen is None else steps[chosen].action


def _format_lesson(steps: Sequence[StepRecord]) -> list[int]:
    """In a success, the first ill-formed answer and the first well-formed one after it: one lesson,
    so that the cap (which keeps the earliest step skills) leaves room for the path's own steps."""
    first_bad = next((t for t, step in enumerate(steps) if not step.action_valid), None)
    if first_bad is None:
        return []
    recovery = next((t for t in range(first_bad + 1, len(steps)) if _acted(steps[t])), None)
    return [first_bad] if recovery is None else [first_bad, recovery]


def _format_example(trajectory: Trajectory, action: str) -> str:
    """A well-formed answer playing ``action``, in the trajectory's environment's format."""
    template = trajectory.response_example or THINK_ACTION_RESPONSE_EXAMPLE
    return "Answer exactly like: " + template.replace("{action}", _quote(action), 1)


def _skills(episode: str, episode_rule: str, marks: Mapping[int, _Mark]) -> EpisodeSkills:
    """The result, with ``meta["rules"]`` naming the rule behind each skill."""
    ordered = sorted(marks.items())
    return EpisodeSkills(episode, {i: text for i, (_, text) in ordered}, meta={"rules": {
        "episode": episode_rule, "steps": {i: rule for i, (rule, _) in ordered}}})


def _keep_rules_of_kept_steps(skills: EpisodeSkills) -> EpisodeSkills:
    """``skills`` with ``meta["rules"]["steps"]`` limited to the step skills that survived cleaning."""
    rules = skills.meta.get("rules")
    if not rules:
        return skills
    steps = {i: rule for i, rule in rules["steps"].items() if i in skills.step_skills}
    return dataclasses.replace(skills, meta={**skills.meta, "rules": {**rules, "steps": steps}})


class RuleBasedSkillExtractor(SkillExtractor):
    """Deterministic skill extractor (registered as 'rule_based'), see the module docstring.

    ``repeat_threshold``: in a failure, an action taken this many times that changed nothing at
    least ``repeat_threshold - 1`` of them gets a "do not repeat" rule (one take may show a new
    observation without moving anything, e.g. ALFWorld's first "Nothing happens.", and the last
    step's result is unknown). ``stall_length``: this many acting steps in a row that changed
    nothing make a no-progress stretch.
    """

    def __init__(self, max_step_skills: int | None = None, repeat_threshold: int = 3, stall_length: int = 3) -> None:
        self.max_step_skills = max_step_skills
        self.repeat_threshold = repeat_threshold
        self.stall_length = stall_length
        self._metrics = {"requests": 0.0, "failures": 0.0}

    def bind(self, context: ExtractorContext) -> None:
        if self.max_step_skills is None:
            self.max_step_skills = context.max_step_skills

    def pop_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {"requests": 0.0, "failures": 0.0}
        return metrics

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        """Each trajectory's skills from the rules, in hindsight (a success's workflow, a failure's
        avoidance rules); an empty trajectory gets an `EpisodeSkills` with an error, counted."""
        cap = self.max_step_skills if self.max_step_skills is not None else 5
        results: list[EpisodeSkills | None] = []
        for trajectory in trajectories:
            self._metrics["requests"] += 1
            if not trajectory.steps:
                self._metrics["failures"] += 1
                results.append(EpisodeSkills(error="empty trajectory"))
                continue
            skills = self.success_skills(trajectory) if trajectory.success else self.failure_skills(trajectory)
            results.append(_keep_rules_of_kept_steps(skills.cleaned(len(trajectory.steps), cap)))
        return results

    # -- successes
    def success_skills(self, trajectory: Trajectory) -> EpisodeSkills:
        """The workflow of the solution path; the decisive steps, the detours and one format lesson."""
        steps, states = trajectory.steps, _states(trajectory.steps)
        path = _solution_path(steps, states)
        on_path, kept = {states[t]: steps[t].action for t in path}, set(path)
        detours = [t for t, step in enumerate(steps) if _acted(step) and t not in kept]
        task = clip_skill(trajectory.task, TASK_EXCERPT_CHARS).rstrip(".")
        episode = _fit_workflow(f"To {task}, follow this workflow: ", _run_length([steps[t].action for t in path]),
                                ". Keep this order of actions for tasks of this kind and avoid detours.")
        marks: dict[int, _Mark] = {}
        for t, step in enumerate(steps):
            if step.reward > 0 and step.action:
                marks[t] = ("decisive", f"Take '{_quote(step.action)}' now: it makes progress on the task.")
        for t in detours:
            good = on_path.get(states[t])
            if good is not None and good != steps[t].action:
                marks.setdefault(t, ("detour", f"Here take '{_quote(good)}' (it led on to success from this "
                                               f"state), not '{_quote(steps[t].action)}'."))
        for t in _format_lesson(steps):
            action = _hindsight_action(t, steps, states, detours)
            if action:
                marks.setdefault(t, ("format", _format_example(trajectory, action)))
        return _skills(episode, "success_workflow", marks)

    # -- failures
    def failure_skills(self, trajectory: Trajectory) -> EpisodeSkills:
        """Avoidance rules for what the observations show went wrong, and the steps where it did."""
        steps, states = trajectory.steps, _states(trajectory.steps)
        verdicts = _judge_moves(steps, states)
        marks: dict[int, _Mark] = {}
        examples = {t: _hindsight_action(t, steps, states, verdicts)
                    for t, step in enumerate(steps) if not step.action_valid}
        for t, action in examples.items():
            if action:
                marks[t] = ("format", _format_example(trajectory, action))
        for t, verdict in verdicts.items():
            quoted = _quote(steps[t].action)
            marks[t] = (verdict, f"'{quoted}' changed nothing here; take a different admissible action."
                        if verdict == "no_progress" else
                        f"Do not take '{quoted}' here: it led back to a state you had already left.")
        rules = [*self._format_rule(trajectory, examples), *self._repeat_rules(steps, verdicts),
                 *self._back_and_forth_rule(steps, states), *self._stall_rule(steps, verdicts)]
        if rules:
            return _skills("Avoid these mistakes: " + " ".join(rules), "failure_rules", marks)
        task = clip_skill(trajectory.task, TASK_EXCERPT_CHARS).rstrip(".")
        episode = (f"The task '{task}' was not completed in {len(steps)} steps: "
                   "check the task statement before each action and prefer actions that move towards it.")
        return _skills(episode, "failure_generic", marks)

    @staticmethod
    def _format_rule(trajectory: Trajectory, examples: Mapping[int, str | None]) -> list[str]:
        """How many answers were ill-formed, the format, and a well-formed answer when one is known."""
        if not examples:
            return []
        answer_format = trajectory.response_format or THINK_ACTION_RESPONSE_FORMAT
        rule = (f"{len(examples)} of {len(trajectory.steps)} answers were ill-formed; every answer must follow "
                f"the format: {answer_format}")
        action = next((a for a in examples.values() if a), None)
        return [rule if action is None else f"{rule} {_format_example(trajectory, action)}"]

    def _repeat_rules(self, steps: Sequence[StepRecord], verdicts: Mapping[int, str]) -> list[str]:
        """"Do not repeat" for the actions taken `repeat_threshold` times that changed nothing at
        least ``repeat_threshold - 1`` of them, the most futile first, at most `MAX_REPEAT_RULES`."""
        taken = Counter(step.action for step in steps if _acted(step))
        futile = Counter(steps[t].action for t, verdict in verdicts.items() if verdict == "no_progress")
        flagged = sorted((a for a in futile if taken[a] >= self.repeat_threshold
                          and futile[a] >= self.repeat_threshold - 1), key=lambda a: (-futile[a], -taken[a], a))
        return [f"Do not repeat '{_quote(a)}': it changed nothing {futile[a]} of the {taken[a]} times it was taken."
                for a in flagged[:MAX_REPEAT_RULES]]

    @staticmethod
    def _back_and_forth_rule(steps: Sequence[StepRecord], states: Sequence[str]) -> list[str]:
        """The first A, B, A, B of acting steps where A left the state and B brought the agent back
        to it (the state before the first A is the state before the second): a two-step loop. Two
        actions that both changed nothing are a stall, not a loop."""
        acting = [t for t, step in enumerate(steps) if _acted(step)]
        for t0, t1, t2, t3 in zip(acting, acting[1:], acting[2:], acting[3:]):
            a0, a1 = steps[t0].action, steps[t1].action
            returned = states[t0] == states[t2] != states[t1]
            if a0 != a1 and steps[t2].action == a0 and steps[t3].action == a1 and returned:
                return [f"Avoid going back and forth between '{_quote(a0)}' and '{_quote(a1)}': "
                        "it brought you back to where you were."]
        return []

    def _stall_rule(self, steps: Sequence[StepRecord], verdicts: Mapping[int, str]) -> list[str]:
        """The first run of `stall_length` or more acting steps in a row that changed nothing
        (ill-formed answers in between neither break nor extend it), numbered from 1 as the
        prompts number steps."""
        run: list[int] = []
        for t in [t for t, step in enumerate(steps) if _acted(step)] + [len(steps)]:
            if verdicts.get(t) == "no_progress":
                run.append(t)
                continue
            if len(run) >= self.stall_length:
                return [f"Steps {run[0] + 1}-{run[-1] + 1} changed nothing (the observation stayed the same): "
                        "when an action changes nothing, switch to a different one."]
            run = []
        return []

