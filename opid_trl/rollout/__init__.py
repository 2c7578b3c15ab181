"""The rollout stage: episodes played to the end, then one padded training row per step.

- `episode`: the record of one episode as it is played (`Episode`).
- `runner`: the episode loop (`EpisodeRunner`: turn-synchronous or asynchronous schedules).
- `prompt_budget`: each turn's prompt fitted to `max_prompt_length` (the longest history window).
- `settings`: turn budget and history window of an environment.
- `step_rows`: the one place where episodes become padded step rows with their sampler log-probs.
"""

from opid_trl.rollout.episode import Episode
from opid_trl.rollout.runner import EpisodeRunner

__all__ = ["Episode", "EpisodeRunner"]
