"""The real ALFWorld text engine (TextWorld's PddlEnv + ALFWorld's demangler), one game at a time.

Each :class:`Engine` owns one ``PddlEnv``, which loads its own private copy of fast-downward's
shared library, so engines never share planner state (the reason the gym batch API is not used:
``textworld.gym.register_games`` given wrapper *instances* shares them across batch slots).

Speed-ups (:func:`install_speedups`, once per process; ``OPID_ALFWORLD_NO_SPEEDUPS=1`` turns them
off). All three memoise pure functions of their text argument; game behaviour is unchanged:

- Loading a game translates its PDDL to SAS twice (plain, and optimised for replanning) and
  ``PddlEnv.reset`` translates again. Translation is pure Python (~1 s for a kitchen) and uses
  module-level options and ``sys.argv``, so concurrent translations from a thread pool race.
  The wrapper takes a lock, caches the last :data:`TRANSLATION_CACHE_SIZE` problems (replaying a
  game: the N episodes of a group, later epochs) and restores ``sys.argv``.
- Every step the engine re-derives each admissible command from its grammar template, re-parsing
  the same template strings and rule conditions with TatSu: caching the parses cuts a step from
  ~0.1 s to ~0.03 s. Parsed symbols get contexts attached afterwards, so cached ones are
  deep-copied on the way out.

Thread safety: TextWorld's parsers are module-level objects, so engines used from a thread pool
(the trainer's ``step_workers``) take :data:`ENGINE_LOCK` around load, step and planning. The
engine is pure Python, so threads could not run it in parallel anyway.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cachetools import LRUCache

_LOCK = threading.Lock()
ENGINE_LOCK = threading.RLock()
TRANSLATION_CACHE_SIZE = 64
_CACHE: LRUCache[tuple, Any] = LRUCache(TRANSLATION_CACHE_SIZE)
_installed = False


def _cached_translation(original):
    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        key = (domain, problem, bool(optimize))
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
            argv = list(sys.argv)
            try:
                result = original(domain, problem, verbose=verbose, optimize=optimize)
            finally:
                sys.argv[:] = argv
            _CACHE[key] = result
            return result

    return pddl2sas


def install_speedups() -> None:
    """Memoise PDDL translation and grammar parsing in TextWorld (see the module docstring)."""
    global _installed
    if _installed or os.environ.get("OPID_ALFWORLD_NO_SPEEDUPS") == "1":
        return
    import fast_downward
    from textworld.envs.pddl import textgen
    from textworld.logic import Rule

    fast_downward.pddl2sas = _cached_translation(fast_downward.pddl2sas)

    parse = lru_cache(maxsize=4096)(textgen._parse_and_convert)

    def parse_and_convert(text: str, rule_name: str = "symbols", trace: bool = False):
        return copy.deepcopy(parse(text, rule_name=rule_name, trace=trace))

    textgen._parse_and_convert = parse_and_convert
    query = lru_cache(maxsize=4096)(Rule.parse_conjunctive_query.__func__)
    Rule.parse_conjunctive_query = classmethod(lambda cls, text: query(cls, text))
    _installed = True


class Engine:
    """One ALFWorld text game in the real engine: load, step, admissible commands, planner."""

    def __init__(self) -> None:
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
            from textworld.envs import PddlEnv
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError("ALFWorld needs the optional extra: pip install 'opid-trl[alfworld]' "
                              "(alfworld, textworld with fast-downward)") from exc
        install_speedups()
        infos = textworld.EnvInfos(admissible_commands=True, won=True)
        self._pddl = PddlEnv(infos)
        self._env = AlfredDemangler(self._pddl, shuffle=False)
        self._loaded: object = None
        self.state: Any = None

    def load(self, game: str | Mapping[str, Any]) -> Any:
        """Load a game file (path or parsed JSON) and start it; returns the first state."""
        if self._pddl.downward_lib is None:
            raise RuntimeError("engine is closed")
        same = game == self._loaded if isinstance(game, str) else game is self._loaded
        with ENGINE_LOCK:
            if not same:
                self._loaded = None
                self._env.load(game)
                self._loaded = game
            self.state = self._env.reset()
        return self.state

    def step(self, command: str) -> Any:
        """Play ``command``; an inadmissible one leaves the game as it was ("Nothing happens.")."""
        with ENGINE_LOCK:
            self.state, _, _ = self._env.step(command)
        return self.state

    @property
    def won(self) -> bool:
        return bool(self.state["won"])

    @property
    def admissible_commands(self) -> list[str]:
        return list(self.state["admissible_commands"])

    def plan(self, names: Engine | None = None) -> list[str]:
        """fast-downward's plan from the current state, as game commands.

        Entities are named as in ``names`` (another engine holding a game with a superset of this
        game's entities) when given, so that a plan made on a reduced problem reads in the words
        of the full game.
        """
        infos = (names or self)._pddl._entity_infos
        with ENGINE_LOCK:
            return list(self._pddl._pddl_state.replan(infos))

    def close(self) -> None:
        """Free the planner's memory. The library copy itself stays mapped: unloading two copies
        (``fast_downward.close_lib``) makes the interpreter crash at exit."""
        lib = getattr(self._pddl, "downward_lib", None)
        if lib is not None:
            with ENGINE_LOCK:
                lib.cleanup()
            self._pddl.downward_lib = None
