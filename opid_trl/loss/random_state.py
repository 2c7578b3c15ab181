"""Replaying random draws: the chunked loss runs each chunk twice (no grad, then with grad), and a
model with dropout must draw the same masks both times, or the per-token loss weights of the first
pass would meet the log-probs of another sample of the network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RandomState:
    """The CPU generator's state and, on a CUDA device, that device's generator state."""

    cpu: torch.Tensor
    device: torch.device
    accelerator: torch.Tensor | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        accelerator = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, accelerator)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.accelerator is not None:
            torch.cuda.set_rng_state(self.accelerator, self.device)


def uses_dropout(model: nn.Module) -> bool:
    """Whether a forward of ``model`` in its current mode draws random masks (dropout modules or
    functional attention dropout with a non-zero rate, in training mode)."""
    if not model.training:
        return False
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, (int, float)) and rate > 0:
            return True
    return False
