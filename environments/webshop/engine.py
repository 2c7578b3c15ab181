"""The WebShop page machine in its "simple" text mode: search page, results, item, sub-pages.

It reproduces the interface WebShop agents are trained on: ``search[query]`` from the search page,
``click[...]`` on whatever the current page shows (product ids, ``next >``, ``< prev``,
``back to search``, option values, ``description``, ``features``, ``buy now``), page text as
``[SEP]``-separated fields, and the admissible actions of each page. An action that the page does
not offer changes nothing and returns the same page, as in WebShop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .catalogue import Product
from .goals import Goal
from .reward import ScoreBreakdown, score_purchase
from .world import ShopWorld

SEP = " [SEP] "
SEARCH, RESULTS, ITEM, DESCRIPTION, FEATURES, DONE = "search", "results", "item", "description", "features", "done"
BACK_TO_SEARCH, NEXT, PREV, BUY_NOW = "back to search", "next >", "< prev", "buy now"
SELECTED_MARK = " (selected)"

_ACTION_RE = re.compile(r"^\s*(search|click)\s*\[(.*)\]\s*$", re.DOTALL)


def _clean(text: str) -> str:
    """How clickable labels are compared: lower-case, single spaces, no selection mark."""
    text = " ".join(text.lower().split())
    return text[: -len(SELECTED_MARK)].rstrip() if text.endswith(SELECTED_MARK) else text


@dataclass
class ShopEngine:
    """The state of one shopping session for one goal."""

    world: ShopWorld
    goal: Goal
    results_per_page: int = 10
    max_results: int = 50
    show_instruction: bool = True
    page: str = SEARCH
    query: str = ""
    results: list[str] = field(default_factory=list)
    page_number: int = 1
    asin: str | None = None
    selected: dict[str, str] = field(default_factory=dict)
    purchase: ScoreBreakdown | None = None

    # ----------------------------------------------------------------- what the page shows
    @property
    def product(self) -> Product | None:
        """The product whose page (or sub-page) is open."""
        return self.world.catalogue.by_asin[self.asin] if self.asin else None

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(len(self.results) / self.results_per_page))

    def page_asins(self) -> list[str]:
        """ASINs listed on the current results page."""
        start = (self.page_number - 1) * self.results_per_page
        return self.results[start : start + self.results_per_page]

    def available_actions(self) -> dict[str, Any]:
        """WebShop's ``get_available_actions``: whether there is a search bar, and the clickables."""
        clickables: list[str] = []
        if self.page == RESULTS:
            clickables.append(BACK_TO_SEARCH)
            if self.page_number > 1:
                clickables.append(PREV)
            if self.page_number < self.num_pages:
                clickables.append(NEXT)
            clickables.extend(a.lower() for a in self.page_asins())
        elif self.page == ITEM:
            clickables.extend([BACK_TO_SEARCH, PREV])
            clickables.extend(self.product.option_values)
            clickables.extend(["description", "features", BUY_NOW])
        elif self.page in (DESCRIPTION, FEATURES):
            clickables.extend([BACK_TO_SEARCH, PREV])
        return {"has_search_bar": self.page == SEARCH, "clickables": clickables}

    def admissible_actions(self) -> list[str]:
        """The available actions as the action strings an agent writes."""
        available = self.available_actions()
        actions = ["search[<your query>]"] if available["has_search_bar"] else []
        return actions + [f"click[{c}]" for c in available["clickables"]]

    def observation(self) -> str:
        """The current page in WebShop's simple text mode."""
        header = ["Instruction:", self.goal.instruction] if self.show_instruction else []
        if self.page == SEARCH:
            return SEP.join(["WebShop", *header, "Search"])
        if self.page == DONE:
            assert self.purchase is not None
            return SEP.join(["Thank you for shopping with us!", "Purchased", self.asin or "",
                             "Your score (min 0.0, max 1.0)", f"{self.purchase.score:.2f}"])
        parts = [*header, "Back to Search"]
        if self.page == RESULTS:
            parts.append(f"Page {self.page_number} (Total results: {len(self.results)})")
            if self.page_number > 1:
                parts.append("< Prev")
            if self.page_number < self.num_pages:
                parts.append("Next >")
            for asin in self.page_asins():
                product = self.world.catalogue.by_asin[asin]
                parts.extend([asin, product.title, f"${product.price:.2f}"])
            if not self.results:
                parts.append("No products match your search.")
            return SEP.join(parts)
        product = self.product
        parts.append("< Prev")
        if self.page == ITEM:
            for group, values in product.options.items():
                parts.append(group)
                parts.extend(v + SELECTED_MARK if self.selected.get(group) == v else v for v in values)
            parts.extend([product.title, f"Price: ${product.price:.2f}", f"Rating: {product.rating}",
                          "Description", "Features", "Buy Now"])
        elif self.page == DESCRIPTION:
            parts.append(product.description)
        else:
            parts.extend(product.features)
        return SEP.join(parts)

    # ----------------------------------------------------------------- acting
    def step(self, action: str) -> tuple[str, bool, dict[str, Any]]:
        """Apply ``action``; returns (observation, done, info). Unavailable actions change nothing."""
        match = _ACTION_RE.match(action or "")
        applied = False
        if match and self.page != DONE:
            verb, argument = match.group(1).lower(), match.group(2).strip()
            if verb == "search":
                applied = self._search(argument)
            else:
                applied = self._click(_clean(argument))
        info = {"admissible": applied, "page": self.page}
        return self.observation(), self.page == DONE, info

    def _search(self, query: str) -> bool:
        if self.page != SEARCH or not query:
            return False
        self.query = query
        self.results = self.world.search.search(query, top_k=self.max_results)
        self.page, self.page_number = RESULTS, 1
        return True

    def _click(self, label: str) -> bool:
        if label not in self.available_actions()["clickables"]:
            return False
        if label == BACK_TO_SEARCH:
            self.page, self.query, self.results, self.page_number = SEARCH, "", [], 1
            self.asin, self.selected = None, {}
        elif self.page == RESULTS:
            if label == NEXT:
                self.page_number += 1
            elif label == PREV:
                self.page_number -= 1
            else:
                self.page, self.asin, self.selected = ITEM, label.upper(), {}
        elif self.page == ITEM:
            if label == PREV:
                self.page, self.asin, self.selected = RESULTS, None, {}
            elif label in ("description", "features"):
                self.page = label
            elif label == BUY_NOW:
                self.purchase = score_purchase(self.goal, self.product, self.selected)
                self.page = DONE
            else:
                group = next(g for g, values in self.product.options.items() if label in values)
                self.selected[group] = label
        else:  # description / features: only "< prev" is left
            self.page = ITEM
        return True
