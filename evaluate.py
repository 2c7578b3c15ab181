"""Evaluate a trained checkpoint (or any model) on an environment split, with no skill extractor and no skills.

    python evaluate.py --model outputs/quickstart/final --environment fetch --split test --num-tasks 64
    python evaluate.py --config configs/alfworld/opid_qwen2.5-3b.yaml --model runs/alfworld/final --split unseen

Writes a JSON file of metrics per task type and prints a markdown table in the paper's layout
(success % per task type and overall, average steps, invalid-action %, WebShop score / EM when
reported). The tasks are drawn with the environment's kwargs, so they belong to the world it plays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder, embedded model name or hub id")
    parser.add_argument("--config", help="run file: takes the environment name/kwargs, the eval split's task kwargs "
                                         "and the episode settings from it")
    parser.add_argument("--environment", help="registered environment name (overrides the run file)")
    parser.add_argument("--env-kwargs", default="{}",
                        help='JSON kwargs for the environment and its task builder, e.g. \'{"action_parsing": "reference"}\'')
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-tasks", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="task selection seed")
    parser.add_argument("--temperature", type=float, default=0.4, help="sampling temperature (reference: 0.4)")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--history-length", type=int)
    parser.add_argument("--max-prompt-length", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="episodes played at once")
    parser.add_argument("--output", help="JSON file (default: <model>/eval-<env>-<split>.json when a folder)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in batch jobs)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import environments
    from opid_trl.generation.base import ModelGenerationBackend
    from opid_trl.rollout.settings import resolve_episode_settings
    from opid_trl.runs.embedded import resolve_model
    from opid_trl.runs.evaluation import evaluate_split, markdown_table, summarize

    try:
        env_name, env_kwargs = args.environment, json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        print(f"--env-kwargs: not JSON ({exc})", file=sys.stderr)
        return 2
    if not isinstance(env_kwargs, dict):
        print("--env-kwargs: expected a JSON object", file=sys.stderr)
        return 2
    max_turns, history_length = args.max_turns, args.history_length
    task_kwargs: dict = {}
    if args.config:
        from opid_trl.runs.run_config import load_run_config

        run = load_run_config(args.config)
        if env_name in (None, run.environment.name):  # another environment: the run file's kwargs do not apply
            env_name = run.environment.name
            env_kwargs = {**run.environment.kwargs, **env_kwargs}
            task_kwargs = dict(run.environment.eval.kwargs) if run.environment.eval else {}
        max_turns = max_turns or run.training.get("max_turns")
        history_length = history_length if history_length is not None else run.training.get("history_length")
    if not env_name:
        print("evaluate: name an environment (--environment or --config)", file=sys.stderr)
        return 2
    if env_name not in environments.available():
        print(f"--environment: unknown environment {env_name!r}; registered: {environments.available()}",
              file=sys.stderr)
        return 2
    make_env = lambda: environments.make(env_name, **env_kwargs)  # noqa: E731
    try:
        settings = resolve_episode_settings(make_env, max_turns, history_length)
    except (ValueError, TypeError) as exc:
        print(f"--env-kwargs: {exc}", file=sys.stderr)
        return 2
    # The tasks are drawn with the environment's own kwargs, so that they belong to the world it plays.
    try:
        tasks = environments.tasks(env_name, split=args.split, num_tasks=args.num_tasks, seed=args.seed,
                                   env_kwargs=env_kwargs, **task_kwargs)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evaluate: cannot build the {args.split!r} tasks of {env_name!r}: {exc}", file=sys.stderr)
        return 2

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32).to(device).eval()
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                                  temperature=args.temperature if args.temperature > 0 else None,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(args.seed)
    backend = ModelGenerationBackend(model, tokenizer, generation)
    episodes = evaluate_split(make_env, tasks, backend, tokenizer, settings.max_turns,
                    settings.history_length, args.max_prompt_length, args.batch_size, progress=not args.no_progress)
    results = summarize(episodes)
    table = markdown_table(results, Path(args.model).name or args.model)
    output = args.output or (str(Path(model_path) / f"eval-{env_name}-{args.split}.json")
                             if Path(model_path).is_dir() else f"eval-{env_name}-{args.split}.json")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps({"model": args.model, "environment": env_name, "split": args.split,
                                        "temperature": args.temperature, "num_tasks": len(tasks),
                                        "results": results, "table": table}, indent=2))
    Path(output).with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
