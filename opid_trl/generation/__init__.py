"""The generation stage: how the rollout turns prompt token ids into sampled responses.

- `base`: `Sample`, the `GenerationBackend` / `ScoringBackend` protocols, `PolicyHandle` (what a
  backend may read of the policy), and `ModelGenerationBackend` for a model outside any trainer.
- `transformers`: `generate` on the training model (CPU, and the default without vLLM).
- `vllm`: TRL's colocated engine or a `vllm serve` server; `vllm_cpu`: what a CPU engine needs.
"""

from opid_trl.generation.base import (
                                      GenerationBackend,
                                      ModelGenerationBackend,
                                      PolicyHandle,
                                      Sample,
                                      ScoringBackend,
                                      SyncState,
)
from opid_trl.generation.transformers import TransformersGenerationBackend

__all__ = ["GenerationBackend", "ModelGenerationBackend", "PolicyHandle", "Sample", "ScoringBackend", "SyncState",
           "TransformersGenerationBackend"]
