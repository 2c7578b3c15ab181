"""Shopping instructions sampled from catalogue products, and the train/test split.

As in WebShop, every goal is written from one target product: a few of its attributes, one value
of some of its option groups, and a price bound above its price. Any other product of the same type
that has those attributes and options under the bound satisfies the goal just as well, so the
reward is computed against the goal, never against the target's id.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .catalogue import Catalogue, Product

_OPENINGS = ("i need", "i am looking for", "i want", "find me", "i'm looking for", "i would like")


@dataclass(frozen=True)
class Goal:
    """One instruction and the structured requirements it was written from."""

    index: int
    split: str
    asin: str
    instruction: str
    product_type: str
    category: str
    subcategory: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    price_upper: float
    query: str

    @property
    def option_values(self) -> tuple[str, ...]:
        """The option values the buyer must select (the goal's ``U_opt``)."""
        return tuple(value for _, value in self.options)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _option_phrase(group: str, value: str) -> str:
    if group == "size":
        return f"in size {value}" if value[:1].isdigit() and " " not in value else f"in {value}"
    if group == "flavor name":
        return f"in {value} flavor"
    return f"in {value} {group}"


def _price_upper(rng: random.Random, price: float) -> float:
    step = 10.0 if price < 100 else 50.0
    return float((math.floor(price / step) + 1 + rng.choice((0, 0, 1, 2))) * step)


def write_goal(rng: random.Random, index: int, split: str, product: Product) -> Goal:
    """A goal whose target is ``product``: 1-3 of its attributes, 1-2 option groups, a price bound."""
    attributes = tuple(rng.sample(product.attributes, rng.randint(1, min(3, len(product.attributes)))))
    groups = list(product.options)
    chosen_groups = rng.sample(groups, rng.randint(1, len(groups))) if groups else []
    chosen_groups = [g for g in groups if g in chosen_groups]  # page order reads more naturally
    options = tuple((g, rng.choice(product.options[g])) for g in chosen_groups)
    price_upper = _price_upper(rng, product.price)
    described = ", ".join(attributes[:-1]) + (" and " if len(attributes) > 1 else "") + attributes[-1]
    subject = f"{described} {product.product_type}"
    if rng.random() < 0.5:
        subject = f"{_article(subject)} {subject}" if not product.product_type.endswith("s") else subject
    text = f"{rng.choice(_OPENINGS)} {subject}"
    if options:
        text += " " + " and ".join(_option_phrase(g, v) for g, v in options)
    text += f", and price lower than {price_upper:.2f} dollars"
    query = " ".join((*attributes, product.product_type))
    return Goal(index, split, product.asin, text, product.product_type, product.category, product.subcategory,
                attributes, options, price_upper, query)


def generate_goals(catalogue: Catalogue, num_goals: int | None = None, test_size: int = 500,
                   seed: int = 0) -> list[Goal]:
    """``num_goals`` goals on distinct target products; the first ``test_size`` are the test split.

    Distinct targets make the splits disjoint in products as well as in instructions, so a test
    score measures shopping, not memorised answers. ``seed`` picks targets and wording.
    """
    num_goals = len(catalogue) if num_goals is None else num_goals
    if not 0 < num_goals <= len(catalogue):
        raise ValueError(f"num_goals must be in 1..{len(catalogue)} (one distinct target product per goal)")
    if not 0 <= test_size < num_goals:
        raise ValueError(f"test_size must be in 0..{num_goals - 1}")
    rng = random.Random(f"webshop-goals-{catalogue.seed}-{seed}")
    targets = rng.sample(range(len(catalogue)), num_goals)
    return [
        write_goal(rng, i, "test" if i < test_size else "train", catalogue.products[t])
        for i, t in enumerate(targets)
    ]
