"""WebShop's purchase score, written from the paper's definition (Yao et al. 2022, section 3.1).

    r = r_type * (|U_att ∩ Y_att| + |U_opt ∩ Y_opt| + 1[y_price <= u_price]) / (|U_att| + |U_opt| + 1)

U are the goal's attributes and options, Y those of the bought product (options: the ones clicked
before "buy now"). The paper matches attributes and options loosely, falling back to the product's
text when the structured fields miss, and multiplies by a product-type match ``r_type`` so that a
cheap item with the right attributes but of the wrong kind ("butter" for "plant-based meat") scores
low. Here both are deterministic word-level rules:

* an attribute matches when it equals (order-insensitively) one of the product's attributes, or
  occurs as a phrase in its title, features or description;
* an option matches when it equals a selected option value, or occurs as a phrase in the title;
* ``r_type`` is 1 for the same product type; 0.5 for the same subcategory or a title containing at
  least half of the goal type's words; 0.1 for the same top category or any overlap; 0 otherwise.

A score of exactly 1.0 is a success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .catalogue import Product
from .goals import Goal
from .text import contains_phrase, same_phrase, words


@dataclass(frozen=True)
class ScoreBreakdown:
    """The terms of the score, kept apart so that evaluation can report which part failed."""

    attributes_matched: int
    attributes_total: int
    options_matched: int
    options_total: int
    price_ok: bool
    r_type: float

    @property
    def score(self) -> float:
        """The WebShop score in [0, 1]."""
        numerator = self.attributes_matched + self.options_matched + int(self.price_ok)
        denominator = self.attributes_total + self.options_total + 1
        return self.r_type * numerator / denominator

    @property
    def success(self) -> bool:
        return self.score >= 1.0


def attribute_matches(attribute: str, product: Product) -> bool:
    """Structured match first, then the paper's text fallback over title, features and description."""
    if any(same_phrase(attribute, a) for a in product.attributes):
        return True
    return any(contains_phrase(text, attribute) for text in (product.title, *product.features, product.description))


def option_matches(option: str, product: Product, selected: Mapping[str, str]) -> bool:
    """A selected value equal to the goal's, or (as in the paper) the value written in the title."""
    return any(same_phrase(option, v) for v in selected.values()) or contains_phrase(product.title, option)


def type_reward(goal: Goal, product: Product) -> float:
    """How well the bought product's kind matches the goal's (the paper's ``r_type``)."""
    if product.product_type == goal.product_type:
        return 1.0
    type_words = set(words(goal.product_type))
    overlap = len(type_words & set(words(product.title))) / len(type_words) if type_words else 0.0
    if (product.category, product.subcategory) == (goal.category, goal.subcategory) or overlap >= 0.5:
        return 0.5
    if product.category == goal.category or overlap > 0:
        return 0.1
    return 0.0


def score_purchase(goal: Goal, product: Product, selected: Mapping[str, str]) -> ScoreBreakdown:
    """Score buying ``product`` with the options ``selected`` (group -> value) against ``goal``."""
    return ScoreBreakdown(
        attributes_matched=sum(attribute_matches(a, product) for a in goal.attributes),
        attributes_total=len(goal.attributes),
        options_matched=sum(option_matches(o, product, selected) for o in goal.option_values),
        options_total=len(goal.option_values),
        price_ok=product.price <= goal.price_upper,
        r_type=type_reward(goal, product),
    )
