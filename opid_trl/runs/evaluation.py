"""Evaluate a model on an environment split with no skill extractor and no skills (as at inference).

Episodes are played with the same batched loop as training (one `generate` call per turn for
all active episodes). Reported per task type and overall: success rate, average steps,
invalid-action rate, average return, the WebShop score (`info["score"]` of the last step) and
exact match (`info["em"]`) where the environment reports them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from environments.base import AgentEnvironment
from opid_trl.rollout.episode import Episode
from opid_trl.rollout.runner import EpisodeRunner


def chat_tokenizer(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """User messages -> prompt ids through the tokenizer's chat template."""

    def tokenize(texts: list[str]) -> list[list[int]]:
        out = tokenizer.apply_chat_template([[{"role": "user", "content": t}] for t in texts],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in out["input_ids"]]

    return tokenize


def evaluate_split(env_factory: Callable[[], AgentEnvironment], tasks: Sequence[Mapping[str, Any]], backend, tokenizer,
         max_turns: int, history_length: int, max_prompt_length: int, batch_size: int = 32,
         progress: bool = False) -> list[Episode]:
    """Play every task once, ``batch_size`` episodes at a time.

    ``progress`` shows a bar over episodes with the running success rate (an evaluation of a few
    hundred long episodes takes a while and should say how far it is).
    """
    from tqdm.auto import tqdm

    runner = EpisodeRunner(env_factory, chat_tokenizer(tokenizer),
                           lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
                           max_turns, history_length, max_prompt_length)
    episodes: list[Episode] = []
    with tqdm(total=len(tasks), desc="episodes", unit="ep", disable=not progress) as bar:
        for start in range(0, len(tasks), batch_size):
            batch = [tasks[i] for i in range(start, min(start + batch_size, len(tasks)))]
            ids = [str(start + i) for i in range(len(batch))]
            with backend.session():
                episodes += runner.play(batch, list(range(start, start + len(batch))), ids, backend)
            bar.update(len(batch))
            bar.set_postfix(success=f"{sum(ep.won for ep in episodes) / len(episodes):.1%}")
    return episodes


def summarize(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Metrics overall (``"all"``) and per task type."""
    groups: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[ep.task_type or "unknown"].append(ep)
    result = {"all": _metrics(episodes)}
    for task_type in sorted(groups):
        result[task_type] = _metrics(groups[task_type])
    return result


def _metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    steps = [s for ep in episodes for s in ep.steps]
    out = {
        "episodes": float(len(episodes)),
        "success_rate": sum(ep.won for ep in episodes) / max(len(episodes), 1),
        "avg_steps": len(steps) / max(len(episodes), 1),
        "invalid_action_rate": sum(not s.action_valid for s in steps) / max(len(steps), 1),
        "avg_return": sum(ep.env_return for ep in episodes) / max(len(episodes), 1),
        "env_errors": float(sum(ep.error is not None for ep in episodes)),
    }
    scores = [ep.steps[-1].info["score"] for ep in episodes if ep.steps and "score" in ep.steps[-1].info]
    if scores:
        out["score"] = sum(scores) / len(episodes)  # an episode that never bought scores 0
    ems = [max((s.info.get("em", 0.0) for s in ep.steps), default=0.0) for ep in episodes
           if any("em" in s.info for s in ep.steps)]
    if ems:
        out["em"] = sum(ems) / len(episodes)
    return out


def markdown_table(results: Mapping[str, Mapping[str, float]], model_name: str) -> str:
    """The paper's layout: one row per model, success (%) per task type and overall, then extras."""
    types = [t for t in results if t != "all"]
    columns = types + ["All"]
    header = "| model | " + " | ".join(columns) + " | avg steps | invalid % |"
    extras = [k for k in ("score", "em") if k in results["all"]]
    header += "".join(f" {k} |" for k in extras)
    row = f"| {model_name} | " + " | ".join(
        f"{100 * results[t if t != 'All' else 'all']['success_rate']:.1f}" for t in columns)
    row += f" | {results['all']['avg_steps']:.2f} | {100 * results['all']['invalid_action_rate']:.1f} |"
    row += "".join(f" {100 * results['all'][k]:.1f} |" for k in extras)
    return "\n".join([header, "|" + " --- |" * (len(columns) + 3 + len(extras)), row])
