"""Seconds of one LoRA training step (forward and backward) of the embedded 0.5B on this machine,
float32 against bfloat16, side by side: what `ctxfold train sft --dtype auto` chooses between.

    python benchmarks/train_small/step_time.py [--tokens 2500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GgufConfig

from ctxfold.models.local import ensure_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    gguf = ensure_weights("qwen2.5-coder-0.5b")
    ids = torch.randint(0, 30_000, (1, args.tokens))
    seconds: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            times.append(time.perf_counter() - start)
        seconds[dtype] = min(times)
        print(f"{dtype}: {', '.join(f'{t:.1f}' for t in times)} s per step of {args.tokens} tokens")
    print(f"float32 / bfloat16: {seconds['float32'] / seconds['bfloat16']:.2f}x")


if __name__ == "__main__":
    main()
