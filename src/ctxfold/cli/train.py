"""``ctxfold train rollouts|export``: RLM runs with rewards, and training examples from them."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ctxfold.cli._common import Parser, add_model_options
from ctxfold.errors import CtxfoldError


def register(verbs: Any) -> None:
    train = verbs.add_parser("train", help="rollouts with rewards, and training data from them")
    steps = train.add_subparsers(dest="step", required=True, parser_class=Parser)
    _add_rollouts(steps)
    _add_export(steps)
    _add_sft(steps)


def _add_rollouts(steps: Any) -> None:
    rollouts = steps.add_parser(
        "rollouts", help="run RLMs on generated bench tasks, keeping each trace and its score"
    )
    rollouts.add_argument("task", help="a bench task (ctxfold bench --list)")
    rollouts.add_argument("--n", type=int, default=3, help="instances per length (default 3)")
    rollouts.add_argument("--seed", type=int, default=0)
    rollouts.add_argument("--lengths", default=None, help="comma-separated input lengths")
    add_model_options(rollouts)
    rollouts.add_argument("--samples", type=int, default=1, metavar="K", help="runs per instance")
    rollouts.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: 0.7 with --samples above 1, else the model's)",
    )
    rollouts.add_argument("--max-iterations", type=int, default=12, metavar="N")
    rollouts.add_argument("--out", required=True, metavar="DIR", help="rollouts folder")
    rollouts.add_argument("--executor", choices=("local", "ray"), default="local")
    rollouts.add_argument("--ray-address", default=None)
    rollouts.add_argument("--ray-cpus", type=int, default=None, metavar="N")
    rollouts.add_argument("--quiet", "-q", action="store_true")
    rollouts.set_defaults(run=run_rollouts)


def _add_export(steps: Any) -> None:
    export = steps.add_parser(
        "export", help="kept runs' conversations as chat-format training examples"
    )
    export.add_argument(
        "sources", nargs="+", metavar="DIR_OR_TRACE", help="rollout/bench folders or traces"
    )
    export.add_argument("--out", required=True, metavar="FILE", help="the training JSONL")
    export.add_argument(
        "--min-score", type=float, default=None, help="keep scored runs at or above this"
    )
    export.add_argument(
        "--turns",
        choices=("root", "sub", "all"),
        default="root",
        help="which conversations become examples: the root model's (default), each "
        "answered sub-call's (recorded by train rollouts), or both",
    )
    export.add_argument("--val-fraction", type=float, default=0.1, metavar="F")
    export.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    export.set_defaults(run=run_export)


def _add_sft(steps: Any) -> None:
    sft = steps.add_parser(
        "sft", help="LoRA-fine-tune a model on exported examples and write a GGUF of it"
    )
    sft.add_argument("--data", required=True, metavar="FILE", help="chat JSONL (train export)")
    sft.add_argument(
        "--base", required=True, metavar="SPEC", help="a HF model folder, a .gguf, or local[:NAME]"
    )
    sft.add_argument("--out", required=True, metavar="DIR")
    sft.add_argument("--lora-rank", type=int, default=16, metavar="R")
    sft.add_argument("--epochs", type=float, default=1.0, metavar="E")
    sft.add_argument("--learning-rate", type=float, default=2e-4, metavar="LR")
    sft.add_argument("--max-length", type=int, default=4096, metavar="TOKENS")
    sft.add_argument("--grad-accum", type=int, default=4, metavar="N")
    sft.add_argument(
        "--loss",
        choices=("assistant", "all"),
        default="assistant",
        help="train on the assistant's replies only (default) or on every token",
    )
    sft.add_argument(
        "--outtype",
        choices=("q8_0", "f16", "bf16", "f32"),
        default="q8_0",
        help="weight type of the GGUF written (default q8_0)",
    )
    sft.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="what the base is trained in (auto: bfloat16 where the hardware computes it)",
    )
    sft.set_defaults(run=run_sft)


def run_rollouts(args: argparse.Namespace) -> int:
    from ctxfold.cli.bench import bench_spec, run_with_progress

    temperature = args.temperature
    if temperature is None and args.samples > 1:
        temperature = 0.7  # several greedy samples would be one sample, K times
    spec = bench_spec(
        args, ("rlm",), samples=args.samples, temperature=temperature, subcall_messages=True
    )
    return run_with_progress(spec, Path(args.out), args)


def run_export(args: argparse.Namespace) -> int:
    from ctxfold.train import export_examples

    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise CtxfoldError("--min-score is a score in [0, 1]")
    report = export_examples(
        [Path(s) for s in args.sources],
        Path(args.out),
        min_score=args.min_score,
        val_fraction=args.val_fraction,
        seed=args.seed,
        turns=args.turns,
    )
    print(report.text())
    print(f"report: {report.files['report']}", file=sys.stderr)
    return 0


def run_sft(args: argparse.Namespace) -> int:
    missing = [m for m in ("torch", "trl", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise CtxfoldError(
            f"train sft needs the train extra ({', '.join(missing)} missing): "
            "pip install 'ctxfold[train]'"
        )
    from ctxfold.train.sft import SFTOptions
    from ctxfold.train.sft import run_sft as fine_tune

    result = fine_tune(
        SFTOptions(
            data=Path(args.data),
            base=args.base,
            out=Path(args.out),
            lora_rank=args.lora_rank,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            max_length=args.max_length,
            grad_accum=args.grad_accum,
            loss=args.loss,
            outtype=args.outtype,
            dtype=args.dtype,
        )
    )
    print(result.gguf)
    share = result.trained_tokens / max(1, result.tokens)
    print(
        f"trained on {result.trained_tokens:,} of {result.tokens:,} tokens ({share:.0%})",
        file=sys.stderr,
    )
    losses = result.losses
    if losses:
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps", file=sys.stderr)
    print(f"run it: ctxfold ask ... --model local:{result.gguf}", file=sys.stderr)
    return 0
