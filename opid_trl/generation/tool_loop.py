"""Keeps the processes of a TRL tool-call loop in step where generation is a collective.

TRL's `_tool_call_loop` generates again for the rows whose last turn called a tool, until none
does; each process runs it on its own rows, so one process may need three generations where
another needs none. Where a generation is a collective, that hangs: under ZeRO-3 every generation
gathers the weights from all processes, under FSDP it summons them, and TRL's vLLM modes gather
the prompts (server mode over every process, colocate mode over the tensor-parallel group). The
process that left the loop waits in its next collective, the others in their generation,
forever (measured on 2 CPU processes under ZeRO-3: the run aborts in the weight gather).

`ToolLoopSync` makes every process run as many generations: each generation inside the loop is
announced (an all-reduce of 1), and a process whose own loop ended joins each announced round
with a one-token dummy prompt whose result is dropped (an all-reduce of 0, then the generation),
until no process announces one. Off (one process, or generation that is local) it costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def generation_is_collective(num_processes: int, sharded: str | None, use_vllm: bool, vllm_mode: str | None,
                             tensor_parallel_size: int = 1) -> bool:
    """Whether one generation needs every process (or a group of them) to take part. ``sharded``:
    `config.sharded_parameters` ('ZeRO-3', 'FSDP' or None)."""
    if num_processes <= 1:
        return False
    if sharded:
        return True
    return use_vllm and (vllm_mode == "server" or tensor_parallel_size > 1)


class ToolLoopSync:
    """Announces each generation of a tool loop and lets a finished process join the others' rounds.

    Args:
        active: whether generation is a collective here (`generation_is_collective`).
        any_process: a flag's maximum over all processes (an all-reduce).
    """

    def __init__(self, active: bool, any_process: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.active = active
        self.any_process = any_process
        self._inside = False
        #: Dummy generations run by this process, for the tests and the logs.
        self.joined_rounds = 0

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The span of TRL's tool loop: generations in it are announced."""
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    def announce(self) -> None:
        """Before a generation: inside the loop, tell the finished processes to join it."""
        if self.active and self._inside:
            self._round(1)

    def drain(self, join: Callable[[], Any]) -> None:
        """After this process's own loop: join (``join()``, a dummy generation) every round another
        process still announces, until none does."""
        if not self.active:
            return
        while self._round(0):
            join()
            self.joined_rounds += 1

    def _round(self, generating: int) -> bool:
        flag = torch.tensor([float(generating)])
        return bool(self.any_process(flag).item() > 0)
