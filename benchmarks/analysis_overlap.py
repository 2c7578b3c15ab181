"""Wall time of one OPID training step with the analysis overlapped vs run serially.

The skill extractor is slow on purpose (it sleeps ``--latency`` seconds per call, as a remote LLM
endpoint would); overlapping runs it in a background thread during the old-policy and reference
log-prob passes. Both settings run in the same process, alternately, on the same tiny model and
tasks; the script prints the median step time of each and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/analysis_overlap.py --steps 6 --latency 0.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import Dataset  # noqa: E402

from opid_trl import OPIDConfig, OPIDTrainer  # noqa: E402
from opid_trl.skills.extractors import RuleBasedSkillExtractor  # noqa: E402
from opid_trl.testing import build_tiny_model, build_tiny_tokenizer  # noqa: E402


class SlowSkillExtractor(RuleBasedSkillExtractor):
    """The rule-based skill extractor behind a fixed per-call latency."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency

    def __call__(self, trajectories):
        time.sleep(self.latency)
        return super().__call__(trajectories)


def step_times(model_dir: str, overlap: bool, steps: int, latency: float, out: str) -> list[float]:
    config = OPIDConfig(output_dir=out, per_device_train_batch_size=8, num_generations=2, max_steps=steps,
                        max_completion_length=24, max_turns=3, max_rows_per_forward=8, beta=0.04,
                        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0,
                        overlap_analysis=overlap, log_analyses=False)
    trainer = OPIDTrainer(model=model_dir, args=config, train_dataset=Dataset.from_list([{"seed": i} for i in range(64)]),
                          environment="fetch", skill_extractor=SlowSkillExtractor(latency))
    trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]  # drop the warm-up step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, hidden_size=256, num_layers=6)
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for overlap in (False, True):
                times[overlap] += step_times(tmp, overlap, args.steps, args.latency, os.path.join(tmp, "out"))
    serial, overlapped = statistics.median(times[False]), statistics.median(times[True])
    print(f"skill extractor latency per call: {args.latency:.2f} s; steps measured per setting: {len(times[True])}")
    print(f"median step time, analysis serial:     {serial:.3f} s")
    print(f"median step time, analysis overlapped: {overlapped:.3f} s")
    print(f"overlapped / serial: {overlapped / serial:.3f}  (time saved per step: {serial - overlapped:.3f} s)")


if __name__ == "__main__":
    main()
