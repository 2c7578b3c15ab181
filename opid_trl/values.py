"""Checks of values that YAML and Python make easy to get wrong, shared by `OPIDConfig` and run files.

``true`` is an ``int`` to Python (so it would count as 1), and ``.nan`` compares false with
everything (so a ``< 0`` check lets it through).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_whole_number(value: Any) -> bool:
    """A whole number that is not a bool (``True`` is an int to Python, and would count as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real number that is not a bool, NaN or infinite (NaN passes every ``<`` check)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
