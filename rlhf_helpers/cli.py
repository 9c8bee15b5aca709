"""Command line: ``python -m rlhf_helpers COMMAND``. Every command calls the same functions as
the notebooks, so a headless run and a notebook run give the same results.

Exit codes: 0 success, 1 a stage failed, 2 bad input (invalid data, unknown preset, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_validate(args: argparse.Namespace) -> int:
    from rlhf_helpers.data_loading import length_counter, validate_rows
    from rlhf_helpers.presets import PresetUnavailableError, get_preset, load_tokenizer

    count, max_tokens = None, None
    if args.preset:
        try:
            preset = get_preset(args.preset)
            count, max_tokens = length_counter(load_tokenizer(args.preset)), preset.max_source_length
        except PresetUnavailableError as e:
            print(f"note: over-long texts not checked: {e}", file=sys.stderr)
    try:
        report, _ = validate_rows(args.path, args.kind, max_tokens=max_tokens, count_tokens=count)
    except (FileNotFoundError, ValueError) as e:
        print(f"{args.path}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for problem in report.errors:
        print(str(problem), file=sys.stderr)
    for problem in report.warnings:
        print(f"{problem} (warning)", file=sys.stderr)
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def _cmd_run(args: argparse.Namespace) -> int:
    from rlhf_helpers.runner import run_course

    try:
        summary = run_course(args.out, preset=args.preset, only=args.only, data=args.data)
    except (FileNotFoundError, ValueError) as e:  # the data folder: missing or ambiguous files
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    for nb in summary["notebooks"]:
        print(f"{nb['name']:<28} {nb['status']:<6} {nb['seconds']:>7.1f} s")
    print(f"total {summary['total_seconds']:.1f} s; summary: {Path(args.out) / 'summary.json'}")
    return EXIT_OK


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    import json

    from rlhf_helpers.presets import model_path

    try:
        path = Path(model_path(args.preset))
    except (FileNotFoundError, ValueError) as e:  # the data folder it is built from: missing files, bad rows
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    info = json.loads((path / "build_info.json").read_text())
    print(
        f"{args.preset} preset at {path}: {info['parameters']:,} parameters, vocab {info['vocab_size']}, "
        f"built in {info['build_seconds']} s, pretraining loss {info['pretrain_loss_first']:.2f} -> "
        f"{info['pretrain_loss_last']:.2f}"
        + (f" (unigram {info['unigram_loss']:.2f})" if "unigram_loss" in info else "")
    )
    return EXIT_OK


def _cmd_sft(args: argparse.Namespace) -> int:
    from rlhf_helpers.distributed import is_main_process
    from rlhf_helpers.presets import PresetUnavailableError
    from rlhf_helpers.sft import run_sft_stage, sft_defaults

    overrides = {
        k: v
        for k, v in {
            "num_epochs": args.epochs,
            "lora_r": args.lora_r,
            "learning_rate": args.lr,
            "target_modules": args.target_modules,
            "report_to": args.report_to,
        }.items()
        if v is not None
    }
    try:
        cfg = sft_defaults(args.preset, **overrides)
        out = run_sft_stage(cfg, out_dir=args.out, progress=not args.quiet)
    except (PresetUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not is_main_process():  # under `accelerate launch`: one report, from the main process
        return EXIT_OK
    m = out.metrics
    print(
        f"SFT done in {m['train_seconds']} s: ROUGE-L {m['rougeL_before']:.3f} -> {m['rougeL']:.3f}, "
        f"BLEU {m['bleu']:.3f}, METEOR {m['meteor'] if m['meteor'] is None else round(m['meteor'], 3)}; "
        f"adapter in {m['adapter_dir']}, metrics in {Path(args.out) / 'metrics.json'}"
    )
    return EXIT_OK


def _cmd_reward(args: argparse.Namespace) -> int:
    from rlhf_helpers.data_loading import DataValidationError
    from rlhf_helpers.distributed import is_main_process
    from rlhf_helpers.presets import PresetUnavailableError
    from rlhf_helpers.reward import default_reward_backbone, reward_defaults, run_reward_stage

    overrides = {
        k: v
        for k, v in {
            "num_epochs": args.epochs,
            "learning_rate": args.lr,
            "max_train_pairs": args.max_pairs,
            "max_length": args.max_length,
            "margin": args.margin,
            "report_to": args.report_to,
        }.items()
        if v is not None
    }
    if args.full_finetune:
        overrides["use_lora"] = False
        overrides["frozen_backbone"] = False  # a pretrained encoder is fine-tuned, not frozen
    try:
        cfg = reward_defaults(args.backbone or default_reward_backbone(), **overrides)
        ignored = [flag for flag, value in (("--epochs", args.epochs), ("--lr", args.lr)) if value is not None]
        if cfg.frozen_backbone and ignored and is_main_process():
            print(
                f"note: {cfg.backbone} is frozen (only a Bradley-Terry head on its features is fitted, in seconds): "
                f"{' and '.join(ignored)} do not apply; --full-finetune trains the encoder",
                file=sys.stderr,
            )
        if cfg.max_train_pairs and is_main_process():
            print(
                f"note: training on at most {cfg.max_train_pairs} pairs (subsampled with seed {cfg.seed}; "
                "--max-pairs 0 uses all)",
                file=sys.stderr,
            )
        out = run_reward_stage(cfg, args.train, args.eval, out_dir=args.out, progress=not args.quiet)
    except DataValidationError as e:
        print(str(e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (PresetUnavailableError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not is_main_process():  # under `accelerate launch`: one report, from the main process
        return EXIT_OK
    m = out.metrics
    sub = f" (subsampled from {m['subsampled_from']})" if m["subsampled_from"] else ""
    print(
        f"reward model ({m['backbone']}) trained on {m['n_train']} pairs{sub} in {m['train_seconds']} s: "
        f"held-out accuracy {m['accuracy']:.3f} on {m['n_eval']} pairs; length baseline "
        f"{m['length_baseline_accuracy']:.3f}; model in {m['model_dir']}"
    )
    return EXIT_OK


def _cmd_judge(args: argparse.Namespace) -> int:
    from rlhf_helpers.data_loading import DataValidationError
    from rlhf_helpers.judger import load_reward_judge, run_judge_stage

    judge = None
    if args.with_reward_model:
        try:
            judge = load_reward_judge(args.with_reward_model)
        except (ImportError, FileNotFoundError, OSError) as e:
            print(f"error: cannot use the reward model at {args.with_reward_model}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        m = run_judge_stage(args.pairs, args.out, judge=judge)
    except DataValidationError as e:
        for problem in e.report.errors:
            print(str(problem), file=sys.stderr)
        print(e.report.summary(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"judged {m['n']} pairs ({m['format']} format) in {m['seconds']} s: agreement {m['agreement']:.3f}, "
        f"kappa {m['kappa']:.3f}, position consistency {m['position_consistency']:.3f}; "
        f"{m['n_written']} labelled pairs ({m['n_ties']} ties dropped) in {m['labelled_pairs']}, "
        f"metrics in {Path(args.out) / 'metrics.json'}"
    )
    return EXIT_OK


def _cmd_ppo(args: argparse.Namespace) -> int:
    from rlhf_helpers.distributed import is_main_process
    from rlhf_helpers.ppo_stage import ppo_defaults, run_ppo_stage
    from rlhf_helpers.presets import PresetUnavailableError
    from rlhf_helpers.tracking import ppo_tensorboard

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "init_kl_coef": args.beta,
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "checkpoint_every": args.checkpoint_every,
        }.items()
        if v is not None
    }
    if args.fixed_kl:
        overrides["adaptive_kl"] = False
    try:
        with ppo_tensorboard(args.report_to):  # report_to "none" (the default): nothing
            out = run_ppo_stage(
                args.preset,
                ppo_defaults(args.preset, **overrides),
                out_dir=args.out,
                resume_from=args.resume,
                progress=not args.quiet,
            )
    except (PresetUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not is_main_process():  # under `accelerate launch`: one report, from the main process
        return EXIT_OK
    m = out.metrics
    print(
        f"PPO: {m['steps']} steps, {m['seconds_per_step']:.2f} s/step; reward {m['reward_start']:.2f} -> "
        f"{m['reward_end']:.2f}; KL {m['kl_end']:.2f} nats (bound {m['kl_bound']}); gold-judge win rate vs SFT "
        f"{m['win_rate_vs_sft']:.3f} ({m['wins']} wins, {m['ties']} ties, {m['losses']} losses); metrics in "
        f"{Path(args.out) / 'metrics.json'}"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rlhf_helpers.evaluation import run_evaluation
    from rlhf_helpers.presets import PresetUnavailableError
    from rlhf_helpers.report import figures_dir

    try:
        out = run_evaluation(args.preset, out_dir=args.out, ppo_dir=args.ppo, progress=not args.quiet)
    except (PresetUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    m = out.metrics
    print(f"evaluated base, SFT and PPO on {m['n_eval']} held-out prompts in {m['seconds']} s (gold-judge win rates):")
    for w in out.comparison.win_rates.values():
        print(f"  {w}")
    peak = m["overoptimisation"]["gold_peak"]
    print(
        f"over-optimisation: {len(out.points)} KL points, gold score peaks at {peak['label']} "
        f"(sqrt KL {peak['sqrt_kl']:.2f}); {m['pairs_exported']} (SFT, PPO) pairs to label in {out.pairs_path}; "
        f"figures in {figures_dir()}; metrics in {Path(args.out) / 'metrics.json'}"
    )
    return EXIT_OK


def _report_to(value: str) -> str:
    """--report-to: none | tensorboard, checked before any training starts (the package must be installed)."""
    from rlhf_helpers.tracking import check_report_to

    try:
        check_report_to(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def _cmd_refresh_outputs(args) -> int:
    """The reference run behind the outputs stored in notebooks/ (tiny preset, the course seed)."""
    from rlhf_helpers.notebook_outputs import refresh_outputs
    from rlhf_helpers.runner import NOTEBOOK_DIR

    try:
        written = refresh_outputs(Path(args.out), NOTEBOOK_DIR)
    except RuntimeError as e:
        print(f"error: {e}; notebooks/ left as it was", file=sys.stderr)
        return EXIT_FAILED
    print(f"stored the outputs of {len(written)} notebooks (run in {args.out})")
    return 0


def _beyond_ppo_error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_positive(**values: int | float | None) -> None:
    for name, v in values.items():
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")


def _report_beyond_ppo(name: str, m: dict, out: str) -> None:
    print(
        f"{name}: {m.get('steps', 0)} steps in {m['train_seconds']} s; KL to SFT {m['kl_to_sft']:.2f} nats; gold-judge "
        f"win rate vs SFT {m['win_rate_vs_sft']:.3f} ({m['wins']} wins, {m['ties']} ties, {m['losses']} losses); "
        f"peak memory {m['peak_memory_mb']:.0f} MiB; metrics in {Path(out) / 'metrics.json'}"
    )


def _cmd_dpo(args: argparse.Namespace) -> int:
    from rlhf_helpers.beyond_ppo_stage import run_dpo_stage
    from rlhf_helpers.dpo import dpo_defaults
    from rlhf_helpers.presets import PresetUnavailableError

    overrides = {
        k: v
        for k, v in {"steps": args.steps, "seed": args.seed, "beta": args.beta, "learning_rate": args.lr}.items()
        if v is not None
    }
    if args.ipo:
        overrides["loss_type"] = "ipo"
    try:
        _check_positive(steps=args.steps, beta=args.beta, lr=args.lr)
        out = run_dpo_stage(
            args.preset, dpo_defaults(args.preset, **overrides), out_dir=args.out, progress=not args.quiet
        )
    except (PresetUnavailableError, FileNotFoundError, ValueError) as e:
        return _beyond_ppo_error(e)
    _report_beyond_ppo("IPO" if args.ipo else "DPO", out.metrics, args.out)
    return EXIT_OK


def _cmd_online(args: argparse.Namespace) -> int:
    from rlhf_helpers.beyond_ppo_stage import run_online_stage
    from rlhf_helpers.online_rl import online_defaults
    from rlhf_helpers.presets import PresetUnavailableError

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "seed": args.seed,
            "beta": args.beta,
            "k": args.k,
            "learning_rate": args.lr,
        }.items()
        if v is not None
    }
    try:
        _check_positive(steps=args.steps, k=args.k, lr=args.lr)
        if args.beta is not None and args.beta < 0:
            raise ValueError(f"--beta must be >= 0, got {args.beta}")
        cfg = online_defaults(args.command, args.preset, **overrides)
        out = run_online_stage(args.command, args.preset, cfg, out_dir=args.out, progress=not args.quiet)
    except (PresetUnavailableError, FileNotFoundError, ValueError) as e:
        return _beyond_ppo_error(e)
    _report_beyond_ppo(args.command.upper(), out.metrics, args.out)
    return EXIT_OK


def _cmd_best_of_n(args: argparse.Namespace) -> int:
    from rlhf_helpers.beyond_ppo_stage import run_best_of_n_stage
    from rlhf_helpers.presets import PresetUnavailableError

    try:
        _check_positive(n=args.n)
        out = run_best_of_n_stage(args.preset, n=args.n, out_dir=args.out, progress=not args.quiet, seed=args.seed)
    except (PresetUnavailableError, FileNotFoundError, ValueError) as e:
        return _beyond_ppo_error(e)
    _report_beyond_ppo(f"best-of-{args.n}", out.metrics, args.out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_helpers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute every course notebook headless and write a summary")
    p.add_argument("--out", default="runs/latest", help="output folder (default: runs/latest)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check a data file; prints PATH:LINE: problems, exit 2 if invalid")
    p.add_argument("path")
    p.add_argument("--kind", required=True, choices=["sft", "preferences", "eval"])
    p.add_argument("--preset", default="tiny", help="preset whose max length defines 'over-long' ('' to skip)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("sft", help="LoRA supervised fine-tuning (notebook 02's code); writes OUT/metrics.json")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="artifacts/sft", help="folder for metrics.json and the adapter")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--target-modules", nargs="+")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser("reward", help="train a Bradley-Terry reward model (notebook 03's code)")
    p.add_argument("--train", help="preference file (JSON/JSONL/CSV/seed format/saved dataset); default: course split")
    p.add_argument("--eval", help="held-out preference file; default: course validation split")
    p.add_argument(
        "--backbone",
        help="tiny | flan-t5-* | minilm | any model name/path (default: the preset on the course data; on your own "
        "data 'minilm', a frozen encoder with a feature head: see README, The course on your data)",
    )
    p.add_argument("--out", default="artifacts/reward_cli", help="folder for metrics.json and the model")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-pairs", type=int, help="subsample the training pairs (0 = all)")
    p.add_argument("--max-length", type=int, help="token budget per (prompt, response); longer inputs are truncated")
    p.add_argument("--margin", type=float, help="fixed margin in the Bradley-Terry loss")
    p.add_argument(
        "--full-finetune",
        action="store_true",
        help="train all weights instead of LoRA; a pretrained encoder (minilm) is fine-tuned instead of frozen",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_reward)

    p = sub.add_parser("judge", help="judge response pairs (notebook 04's judger); writes OUT/metrics.json")
    p.add_argument("--pairs", required=True, help="preference file (prompt/chosen/rejected) or seed-format rows")
    p.add_argument("--out", default="artifacts/judge", help="folder for metrics.json and labelled_pairs.jsonl")
    p.add_argument("--with-reward-model", metavar="PATH", help="add the reward-model criterion (a saved reward model)")
    p.set_defaults(func=_cmd_judge)

    p = sub.add_parser("ppo", help="PPO on the SFT policy against the reward model (notebook 05's code)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="artifacts/ppo_cli", help="folder for metrics.json, checkpoints, history")
    p.add_argument("--steps", type=int)
    p.add_argument("--beta", type=float, help="initial KL coefficient")
    p.add_argument("--fixed-kl", action="store_true", help="keep beta fixed (no adaptive KL controller)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps (notebook 06's KL points)")
    p.add_argument("--resume", help="checkpoint folder to continue from")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_ppo)

    p = sub.add_parser("evaluate", help="base vs SFT vs PPO with CIs, over-optimisation (notebook 06's code)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="artifacts/evaluation_cli", help="folder for metrics.json")
    p.add_argument("--ppo", help="PPO run folder (final/, checkpoints/); default <artifacts>/ppo, trained if missing")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("refresh-outputs", help="re-run every notebook, store its outputs in notebooks/")
    p.add_argument("--out", default="runs/reference", help="where the run's executed copies and artifacts go")
    p.set_defaults(func=_cmd_refresh_outputs)

    p = sub.add_parser("dpo", help="DPO (or --ipo) on the preference pairs, from the SFT policy")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="artifacts/dpo_cli", help="folder for metrics.json, the adapter, history")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--beta", type=float, help="DPO's beta (IPO's tau)")
    p.add_argument("--lr", type=float)
    p.add_argument("--ipo", action="store_true", help="IPO's loss instead of DPO's")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_dpo)

    for name, what in (("rloo", "RLOO (leave-one-out baseline)"), ("grpo", "GRPO (group-normalised advantages)")):
        p = sub.add_parser(name, help=f"{what} against the reward model, k replies per prompt, no value head")
        p.add_argument("--preset", default="tiny")
        p.add_argument("--out", default=f"artifacts/{name}_cli", help="folder for metrics.json, checkpoints, history")
        p.add_argument("--steps", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--beta", type=float, help="KL coefficient (RLOO: in the reward; GRPO: k3 in the loss)")
        p.add_argument("--k", type=int, help="replies per prompt (the prompts per step stay the same)")
        p.add_argument("--lr", type=float)
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=_cmd_online)

    p = sub.add_parser("best-of-n", help="N samples per prompt from SFT, the reward model's favourite kept")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", default="artifacts/best_of_n_cli", help="folder for metrics.json")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="ignored (best-of-N trains nothing); accepted like the other commands")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_best_of_n)

    p = sub.add_parser("build-tiny", help="build (or show) a cached offline tiny preset (T5 or decoder-only)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "tiny-causal"])
    p.set_defaults(func=_cmd_build_tiny)

    for name in ("sft", "reward", "ppo"):
        sub.choices[name].add_argument(
            "--report-to",
            type=_report_to,
            help="tensorboard: also log the training curves to <artifacts>/tensorboard/<stage>/ (default: none)",
        )
    for name, command in sub.choices.items():
        if name != "validate":  # validate reads one file; every other command reads the data folder
            command.add_argument(
                "--data",
                metavar="DIR",
                help="data folder with sft, preferences and eval files (default: env RLHF_DATA_DIR, else the course's)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data", None):
        # Every stage reads the data folder through config.data_dir(): set it once, for this process
        # (and, for `run`, the notebook kernels it starts).
        folder = Path(args.data).expanduser()
        if not folder.is_dir():
            print(f"error: --data {args.data}: no such folder", file=sys.stderr)
            return EXIT_BAD_INPUT
        os.environ["RLHF_DATA_DIR"] = str(folder.resolve())
    if getattr(args, "preset", None) and args.command not in ("run", "validate"):
        # The stages read and write the artifacts of the preset they train (config.artifacts_dir is keyed by it).
        os.environ["RLHF_PRESET"] = args.preset
    if args.command not in ("run", "validate"):  # the commands that compute in this process
        # First, before any tensor work: CPU threads started later inherit the flush-to-zero mode, as in
        # the notebooks (their CONFIG cell calls set_seed first), so a stage gives the same numbers both ways.
        from rlhf_helpers.config import fast_cpu_math

        fast_cpu_math()
    return args.func(args)
