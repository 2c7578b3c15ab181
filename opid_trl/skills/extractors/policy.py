"""The policy being trained as its own skill extractor: no external service needed.

Analysis prompts go through the trainer's generation backend (the same engine as the rollouts,
so vLLM when the rollouts use it), one batched call for all trajectories of the process, and
one more for the re-asks. A small policy often answers with poor JSON; such trajectories simply
get no skill signal and are counted.
"""

from __future__ import annotations

import time
from typing import Any

from opid_trl.skills.extractors.llm import Completion, LLMSkillExtractor
from opid_trl.skills.extractors.protocol import ExtractorContext


class PolicySkillExtractor(LLMSkillExtractor):
    """Skill extractor that samples the analysis from the policy itself (registered as 'self').

    Args:
        max_new_tokens: budget of one analysis answer.
        max_record_chars: record budget (default smaller than for hosted models, since the
            prompt must fit the policy's own context next to the answer).
        Other arguments: see `LLMSkillExtractor`.
    """

    # It runs the policy: it cannot run while the trainer computes log-probs with it.
    supports_overlap = False

    def __init__(self, max_new_tokens: int = 512, max_record_chars: int = 6000, **kwargs: Any) -> None:
        super().__init__(max_record_chars=max_record_chars, **kwargs)
        if max_new_tokens < 1:
            raise ValueError(f"PolicySkillExtractor.max_new_tokens: must be >= 1, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.context: ExtractorContext | None = None

    def bind(self, context: ExtractorContext) -> None:
        super().bind(context)
        self.context = context

    @property
    def cache_salt(self) -> str:
        # The policy changes every step: a cached analysis from an older policy is still a valid
        # analysis of the same trajectory, so the model is not part of the key.
        return f"{super().cache_salt}:self"

    def _complete_batch(self, conversations: list[list[dict]]) -> list[Completion]:
        """All analysis prompts of the batch in one generation call on the rollout engine."""
        context = self.context
        if context is None or context.policy is None or context.generation_backend is None:
            raise RuntimeError("PolicySkillExtractor must be bound to a policy and its generation backend "
                               "(OPIDTrainer calls bind)")
        prompt_ids = context.policy.tokenize_prompts(conversations)
        backend = context.generation_backend
        start = time.perf_counter()
        with backend.session():
            completion_ids = backend.generate(prompt_ids, max_new_tokens=self.max_new_tokens)
        elapsed = (time.perf_counter() - start) / max(len(conversations), 1)
        texts = context.policy.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return [Completion(text=text, latency_s=elapsed, prompt_tokens=len(p), completion_tokens=len(c))
                for text, p, c in zip(texts, prompt_ids, completion_ids)]
