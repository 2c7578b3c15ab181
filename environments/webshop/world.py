"""One catalogue + search index + goal list per configuration, built once per process.

The trainer builds one environment instance per episode slot (dozens); they all share the same
read-only world, so it is cached by its parameters (catalogue and index are shared further between
worlds that differ only in their goals). Building is guarded by a lock because resets may run on a
thread pool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .catalogue import Catalogue, generate_catalogue
from .goals import Goal, generate_goals
from .search import ProductSearch


@dataclass(frozen=True)
class WorldKey:
    """The parameters that define a world; equal keys give identical worlds on every machine."""

    num_products: int = 3000
    catalogue_seed: int = 0
    num_goals: int | None = None
    test_size: int = 500
    goal_seed: int = 0


@dataclass
class ShopWorld:
    """Everything shared by the environments of one configuration."""

    key: WorldKey
    catalogue: Catalogue
    search: ProductSearch
    goals: list[Goal]

    def split_indices(self, split: str) -> list[int]:
        """Goal indices of ``split`` ("train" or "test"), in order."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return [g.index for g in self.goals if g.split == split]


#: The keyword arguments that select a world (shared by the environment and its task builder).
WORLD_KWARGS = ("num_products", "catalogue_seed", "num_goals", "test_size", "goal_seed")

_WORLDS: dict[WorldKey, ShopWorld] = {}
_SHOPS: dict[tuple[int, int], tuple[Catalogue, ProductSearch]] = {}
_LOCK = threading.Lock()


def get_world(num_products: int = 3000, catalogue_seed: int = 0, num_goals: int | None = None, test_size: int = 500,
              goal_seed: int = 0) -> ShopWorld:
    """The (cached) world for these parameters."""
    key = WorldKey(num_products, catalogue_seed, num_goals, test_size, goal_seed)
    with _LOCK:
        world = _WORLDS.get(key)
        if world is None:
            shop = _SHOPS.get((num_products, catalogue_seed))
            if shop is None:
                catalogue = generate_catalogue(num_products, catalogue_seed)
                shop = _SHOPS[(num_products, catalogue_seed)] = (catalogue, ProductSearch(catalogue))
            goals = generate_goals(shop[0], num_goals=num_goals, test_size=test_size, seed=goal_seed)
            world = _WORLDS[key] = ShopWorld(key, shop[0], shop[1], goals)
        return world
