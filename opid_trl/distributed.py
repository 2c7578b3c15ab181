"""Cross-process reductions every rank calls together: sums, maxima and counts over all processes.

A step batch holds a different number of rows on every process, so statistics and shapes that
must agree (the padded row count, the number of skill passes, metrics) come from these global
reductions. Each is a collective: every rank must call it, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator


def global_sum(accelerator: Accelerator, values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over all processes (float64)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()


def global_max(accelerator: Accelerator, values: torch.Tensor) -> float:
    """Largest element of ``values`` over all processes (0 when every process has none)."""
    local = values.max().double() if values.numel() else torch.zeros((), dtype=torch.float64)
    return accelerator.reduce(local.to(accelerator.device), reduction="max").item()


def global_max_count(accelerator: Accelerator, count: int) -> int:
    """The largest ``count`` any process has (e.g. rows or skill passes, so every rank runs as many)."""
    return int(global_max(accelerator, torch.tensor([float(count)])))
