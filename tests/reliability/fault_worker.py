"""Worker of the multi-process fault test: two DDP processes, where every environment of rank 1
either raises or hangs. Launched by tests/reliability/test_multiprocess_faults.py under torchrun."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from datasets import Dataset  # noqa: E402

from environments import FetchEnvironment  # noqa: E402
from opid_trl import EpisodeSkills, OPIDConfig, OPIDTrainer  # noqa: E402

_calls = itertools.count()


class FaultyOnRankOne(FetchEnvironment):
    """Fetch, except on rank 1: every other step raises, the others hang for a minute."""

    def step(self, text):
        if int(os.environ.get("RANK", "0")) == 1:
            if next(_calls) % 2:
                raise RuntimeError("engine crashed on rank 1")
            time.sleep(60)
        return super().step(text)


def skills(trajectories):
    return [EpisodeSkills("Walk east, then take the target.", {0: "Go east now."}) for _ in trajectories]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    config = OPIDConfig(
        output_dir=os.path.join(os.path.dirname(args.output), "run"), per_device_train_batch_size=2,
        num_generations=2, max_steps=2, max_completion_length=8, max_turns=3, max_prompt_length=512,
        max_rows_per_forward=2, learning_rate=1e-3, beta=0.0, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, bf16=False, seed=0, env_step_timeout=2.0,
    )
    trainer = OPIDTrainer(model=args.model, args=config, train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          environment=FaultyOnRankOne, skill_extractor=skills)
    trainer.train()
    if trainer.accelerator.is_main_process:
        history = [h for h in trainer.state.log_history if "loss" in h]
        with open(args.output, "w") as f:
            json.dump({"losses": [h["loss"] for h in history], "errors": [h["env/errors"] for h in history],
                       "finite": all(math.isfinite(h["loss"]) for h in history)}, f)
    trainer.accelerator.end_training()  # the hung environment threads are daemons: the process exits


if __name__ == "__main__":
    main()
