"""Play a real WebShop installation (``web_agent_site``) through the same protocol and prompt.

The real shop needs its multi-GB product data, Java and pyserini, none of which can be installed
offline, so it is an optional import: constructing the adapter without it raises an ImportError
that says what to install and points to the offline :class:`WebShopEnvironment`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import AgentEnvironment, PromptView
from .environment import render_webshop_prompt

_SEP = " [SEP] "
_MISSING = (
    "RealWebShopEnvironment needs a WebShop installation: clone https://github.com/princeton-nlp/WebShop, run its "
    "setup.sh (product data, search index, Java for pyserini) and put it on PYTHONPATH so that "
    "`web_agent_site.envs.web_agent_text_env` imports. Without it, use the offline "
    "environments.webshop.WebShopEnvironment (same interface, synthetic catalogue)."
)


def _import_text_env() -> type:
    try:
        from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return WebAgentTextEnv


def split_instruction(observation: str) -> tuple[str, str]:
    """``(instruction, page)`` from a raw WebShop text observation ("... Instruction: [SEP] text [SEP] page")."""
    parts = observation.split(_SEP)
    for i, part in enumerate(parts[:-1]):
        if part.strip().lower() == "instruction:":
            return parts[i + 1].strip(), _SEP.join(parts[i + 2 :])
    return "", observation


class RealWebShopEnvironment(AgentEnvironment):
    """WebShop's ``WebAgentTextEnv`` (text mode); task rows carry ``goal_index`` (WebShop's session id).

    The environment reward is ``success_reward`` when WebShop's score is 1.0; the score itself is
    returned in ``info["score"]``, as with the offline environment.
    """

    default_history_length = 2
    default_max_turns = 15
    reference_tail_chars = 20  # the reference WebShop projection plays the last 20 characters

    def __init__(self, observation_mode: str = "text", success_reward: float = 10.0, action_parsing: str = "strict",
                 **env_kwargs: Any) -> None:
        """``env_kwargs`` go to ``WebAgentTextEnv`` (e.g. ``num_products``, ``human_goals``);
        ``action_parsing`` is "strict" or "reference" (see ``environments.base``)."""
        super().__init__(action_parsing)
        text_env = _import_text_env()
        self._env = text_env(observation_mode=observation_mode, **env_kwargs)
        self.success_reward = success_reward

    def _update_actions(self) -> None:
        available = self._env.get_available_actions()
        actions = ["search[<your query>]"] if available.get("has_search_bar") else []
        actions.extend(f"click[{c}]" for c in available.get("clickables", []) if c != "search")
        self.admissible_actions = tuple(actions)

    def reset(self, task: Mapping[str, Any]) -> str:
        session = task.get("goal_index", task.get("session"))
        observation, _ = self._env.reset(session=session)
        instruction, page = split_instruction(observation)
        self.task_description = instruction
        self.task_type = None
        self._update_actions()
        return page

    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        observation, score, done, _ = self._env.step(action)
        score = float(score or 0.0)
        won = bool(done) and score >= 1.0
        self._update_actions()
        _, page = split_instruction(observation)
        return page, self.success_reward if won else 0.0, bool(done), won, {"score": score, "won": won}

    def render_prompt(self, view: PromptView, history_length: int) -> str:
        return render_webshop_prompt(view, history_length)

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if callable(close):
            close()
