"""Environment steps per second, for every registered environment, stepping a batch of episodes.

Each environment plays a batch of tasks with its expert policy (render the step prompt, step
the expert's answer) until every episode ends; the script repeats this and prints the median
steps/s. The baseline measured in the same run is the batch stepped one episode after the other;
the second setting steps the batch with a thread pool (what `OPIDConfig.env_step_workers` does),
and the ratio says whether threads help that engine.

    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import environments  # noqa: E402
from environments.base import HistoryEntry, PromptView  # noqa: E402


def play_batch(name: str, rows, history_length: int, max_turns: int, workers: int) -> tuple[int, float]:
    envs = [environments.make(name) for _ in rows]
    pool = ThreadPoolExecutor(workers) if workers else None

    def run(fn, items):
        return list(pool.map(fn, items)) if pool else [fn(item) for item in items]

    start = time.perf_counter()
    observations = run(lambda pair: pair[0].reset(pair[1]), list(zip(envs, rows)))
    histories = [[] for _ in envs]
    active = list(range(len(envs)))
    steps = 0
    for turn in range(max_turns):
        if not active:
            break

        def one(i):
            env = envs[i]
            view = PromptView(env.task_description, turn, observations[i], tuple(env.admissible_actions),
                              tuple(histories[i]))
            env.render_prompt(view, history_length)
            response = env.expert_response() or "<think>no expert</think><action>look</action>"
            return i, response, env.step(response)

        for i, response, result in run(one, active):
            histories[i].append(HistoryEntry(observations[i], result.action or response))
            observations[i] = result.observation
            steps += 1
            if result.done:
                active.remove(i)
    elapsed = time.perf_counter() - start
    if pool:
        pool.shutdown()
    return steps, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--envs", nargs="*", default=None, help="default: every registered environment")
    args = parser.parse_args()
    print(f"{'environment':<12} {'steps/s sequential':>19} {'steps/s threaded':>17} {'threaded/sequential':>20}")
    for name in args.envs or environments.available():
        probe = environments.make(name)
        history, max_turns = probe.default_history_length, probe.default_max_turns
        probe.close()
        rows = environments.tasks(name, split="train", num_tasks=args.batch, seed=0)
        play_batch(name, rows, history, max_turns, 0)  # warm-up: builds catalogues, indexes, games
        rates = {0: [], args.workers: []}
        for _ in range(args.repeats):
            for workers in rates:
                steps, elapsed = play_batch(name, rows, history, max_turns, workers)
                rates[workers].append(steps / elapsed)
        seq, thr = statistics.median(rates[0]), statistics.median(rates[args.workers])
        print(f"{name:<12} {seq:>19.1f} {thr:>17.1f} {thr / seq:>20.2f}")


if __name__ == "__main__":
    main()
