"""The offline WebShop environment: the synthetic shop behind OPID's environment protocol.

Reward follows OPID_SPEC: ``success_reward`` (10) when the bought item scores 1.0, else 0; the raw
WebShop score is always in ``info["score"]`` so that evaluation can report it. The prompt follows
the reference WebShop prompt (task, step count, last K steps, page, admissible actions, format).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..base import AgentEnvironment, PromptView, StepResult, reference_prompt
from .engine import BACK_TO_SEARCH, BUY_NOW, DESCRIPTION, DONE, FEATURES, ITEM, NEXT, PREV, RESULTS, SEARCH, ShopEngine
from .goals import Goal
from .world import WORLD_KWARGS, ShopWorld, get_world


def render_webshop_prompt(view: PromptView, history_length: int) -> str:
    """The reference WebShop step prompt, showing the last ``history_length`` steps of ``view``."""
    task_lines = ["You are an expert autonomous agent operating in the WebShop e-commerce platform.",
                  f"Your task is to: {view.task}."]
    actions = "\n[\n" + ",\n".join(f"'{a}'" for a in view.admissible_actions) + "\n]"
    return reference_prompt(task_lines, view, history_length, actions)


class WebShopEnvironment(AgentEnvironment):
    """Shop for the product an instruction describes in a seeded synthetic WebShop.

    Task rows are ``{"goal_index": i, "split": "train" | "test", "asin": target}`` (see
    :func:`webshop_tasks`; ``split`` and ``asin`` are optional checks);
    the world (catalogue, index, goals) is fixed by the constructor arguments and shared by every
    instance with the same arguments in the process.
    """

    default_history_length = 2
    default_max_turns = 15
    reference_tail_chars = 20  # the reference WebShop projection plays the last 20 characters

    def __init__(
        self,
        num_products: int = 3000,
        catalogue_seed: int = 0,
        num_goals: int | None = None,
        test_size: int = 500,
        goal_seed: int = 0,
        results_per_page: int = 10,
        max_results: int = 50,
        max_steps: int | None = None,
        success_reward: float = 10.0,
        partial_reward: bool = False,
        show_instruction: bool = False,
        action_parsing: str = "strict",
    ) -> None:
        """``partial_reward`` pays ``success_reward * score`` for any purchase (a denser variant of
        the spec's success-only reward); ``show_instruction`` repeats the instruction on every page
        as WebShop's raw observation does (off: the task is already in the prompt);
        ``action_parsing`` is "strict" or "reference" (see ``environments.base``)."""
        super().__init__(action_parsing)
        self.world: ShopWorld = get_world(num_products, catalogue_seed, num_goals, test_size, goal_seed)
        self.results_per_page = results_per_page
        self.max_results = max_results
        self.max_steps = max_steps
        self.success_reward = success_reward
        self.partial_reward = partial_reward
        self.show_instruction = show_instruction
        self.engine: ShopEngine | None = None
        self.goal: Goal | None = None
        self.steps = 0

    def reset(self, task: Mapping[str, Any]) -> str:
        index = int(task["goal_index"])
        if not 0 <= index < len(self.world.goals):
            raise ValueError(f"goal_index {index} out of range 0..{len(self.world.goals) - 1}")
        goal = self.world.goals[index]
        split = task.get("split")
        if split is not None and split != goal.split:
            raise ValueError(f"goal {index} belongs to the {goal.split!r} split, not {split!r}")
        expected = task.get("asin")
        if expected is not None and expected != goal.asin:
            raise ValueError(f"goal {index} of this world is product {goal.asin}, the task row expects {expected}: "
                             "the rows were built for another world (give the task builder the environment's kwargs)")
        self.goal = goal
        self.engine = ShopEngine(self.world, goal, self.results_per_page, self.max_results, self.show_instruction)
        self.steps = 0
        self.task_description = goal.instruction
        self.task_type = goal.category
        self.admissible_actions = tuple(self.engine.admissible_actions())
        return self.engine.observation()

    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.engine is None:
            raise RuntimeError("reset() must be called before step()")
        finished_before = self.engine.page == DONE
        observation, done, info = self.engine.step(action)
        purchase = None if finished_before else self.engine.purchase  # pay a purchase once
        score = purchase.score if purchase is not None else 0.0
        won = purchase is not None and purchase.success
        if purchase is None:
            reward = 0.0
        elif self.partial_reward:
            reward = self.success_reward * score
        else:
            reward = self.success_reward if won else 0.0
        info.update(score=score, won=won, purchased=self.engine.asin if purchase else None)
        if purchase is not None:
            info.update(r_type=purchase.r_type, price_ok=purchase.price_ok,
                        attributes_matched=purchase.attributes_matched, options_matched=purchase.options_matched)
        done = done or self._out_of_steps()
        self.admissible_actions = tuple(self.engine.admissible_actions()) if not done else ()
        return observation, reward, done, won, info

    def _out_of_steps(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def step(self, text: str) -> StepResult:
        """Every answer counts towards ``max_steps``, ill-formed ones too (in "strict" mode they
        leave the page unchanged; in "reference" mode their action is played like any other)."""
        self.steps += 1
        result = super().step(text)
        if not self.executes(result.action, result.action_valid):
            if self._out_of_steps():
                result.done = True
            result.info = {"score": 0.0, "won": False, "admissible": False,
                           "page": self.engine.page if self.engine else SEARCH, "purchased": None}
        return result

    def render_prompt(self, view: PromptView, history_length: int) -> str:
        return render_webshop_prompt(view, history_length)

    # ----------------------------------------------------------------- oracle
    def step_label(self, expert_action: str | None, action: str | None, valid: bool) -> bool | None:
        """WebShop's rule: clicks must be the oracle's (one product, its options, then buy); a
        search is good whenever the oracle searches too (the query's wording is free: the oracle's
        is one of many that find the product); anything else, or an ill-formed answer, is bad."""
        if expert_action is None:
            return None
        if valid and action is not None and action.startswith("search[") and expert_action.startswith("search["):
            return True
        return super().step_label(expert_action, action, valid)

    def expert_action(self) -> str | None:
        """The oracle's next action: search the goal's key words, open the target product (paging
        through the results if needed), select the goal's options, buy. Works from any page;
        ``None`` before :meth:`reset` and after the purchase."""
        engine, goal = self.engine, self.goal
        if engine is None or goal is None or engine.page == DONE:
            return None
        target = goal.asin
        if engine.page == SEARCH:
            query = goal.query
            if target not in self.world.search.search(query, top_k=self.max_results):
                query = self.world.catalogue.by_asin[target].title.lower()
            return f"search[{query}]"
        if engine.page == RESULTS:
            if target in engine.page_asins():
                return f"click[{target.lower()}]"
            if target in engine.results:
                before = engine.results.index(target) < (engine.page_number - 1) * engine.results_per_page
                return f"click[{PREV if before else NEXT}]"
            return f"click[{BACK_TO_SEARCH}]"
        if engine.page in (DESCRIPTION, FEATURES):
            return f"click[{PREV}]"
        assert engine.page == ITEM
        if engine.asin != target:
            return f"click[{PREV}]"
        for group, value in goal.options:
            if engine.selected.get(group) != value:
                return f"click[{value}]"
        return f"click[{BUY_NOW}]"


_ENVIRONMENT_ONLY = ("results_per_page", "max_results", "max_steps", "success_reward", "partial_reward",
                     "show_instruction", "action_parsing")
_SPLITS = {"train": "train", "test": "test", "eval": "test", "validation": "test"}


def webshop_tasks(split: str = "train", num_tasks: int | None = None, seed: int = 0, **kwargs: Any):
    """A ``datasets.Dataset`` of task rows ``{"goal_index", "split", "asin"}`` (the registry's task
    builder); ``asin`` is the goal's target product, which lets :meth:`WebShopEnvironment.reset`
    refuse a row made for another world.

    ``kwargs`` are the environment's constructor arguments: the world ones (num_products,
    catalogue_seed, num_goals, test_size, goal_seed) select the goals, so the same dict can be given
    to the environment and to this function; the others are ignored. "eval"/"validation" mean the
    test split. ``seed`` draws which ``num_tasks`` goals (reproducibly; rows stay in goal order).
    """
    import random

    from datasets import Dataset

    unknown = set(kwargs) - set(WORLD_KWARGS) - set(_ENVIRONMENT_ONLY)
    if unknown:
        raise TypeError(f"webshop_tasks: unexpected arguments {sorted(unknown)}")
    if split not in _SPLITS:
        raise ValueError(f"webshop: unknown split {split!r}; choose one of {sorted(_SPLITS)}")
    world = get_world(**{k: v for k, v in kwargs.items() if k in WORLD_KWARGS})
    indices: Sequence[int] = world.split_indices(_SPLITS[split])
    if num_tasks is not None and num_tasks < len(indices):
        indices = sorted(random.Random(f"webshop-tasks-{seed}").sample(list(indices), num_tasks))
    return Dataset.from_list([{"goal_index": int(i), "split": _SPLITS[split], "asin": world.goals[i].asin}
                              for i in indices])
