"""A WebShop-protocol shopping environment that runs offline.

WebShop (Yao et al. 2022) needs a multi-GB product dump, Java and pyserini. This package keeps its
interface -- ``search[...]`` / ``click[...]`` actions, ``[SEP]``-separated pages, per-page admissible
actions, instructions with attributes, options and a price bound, and the paper's purchase score --
over a seeded synthetic catalogue searched with BM25 (``bm25s``). :class:`RealWebShopEnvironment`
plays a real installation through the same protocol when one is available.

Register as ``environments.register("webshop", WebShopEnvironment, tasks=webshop_tasks)``.
"""

from .adapter import RealWebShopEnvironment
from .catalogue import Catalogue, Product, generate_catalogue
from .engine import ShopEngine
from .environment import WebShopEnvironment, render_webshop_prompt, webshop_tasks
from .goals import Goal, generate_goals
from .reward import ScoreBreakdown, score_purchase, type_reward
from .search import ProductSearch
from .world import ShopWorld, get_world

__all__ = [
    "Catalogue",
    "Goal",
    "Product",
    "ProductSearch",
    "RealWebShopEnvironment",
    "ScoreBreakdown",
    "ShopEngine",
    "ShopWorld",
    "WebShopEnvironment",
    "generate_catalogue",
    "generate_goals",
    "get_world",
    "render_webshop_prompt",
    "score_purchase",
    "type_reward",
    "webshop_tasks",
]
