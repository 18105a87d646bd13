"""`ctxfold train sft`: bad input, and the whole loop on a tiny model the test builds itself:
rollouts -> export -> LoRA SFT -> GGUF -> an RLM run on it (the real local engine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold.cli import main
from ctxfold.errors import CtxfoldError
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.train.sft import prompt_completion, read_examples

_EXAMPLE = {
    "messages": [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "How long is the input?"},
        {"role": "assistant", "content": "```python\nprint(len(context))\n```"},
    ]
}


def _line(*messages: tuple[str, int | None]) -> str:
    """A chat example of these (role, weight) messages."""
    return json.dumps(
        {
            "messages": [
                {"role": role, "content": "x"} | ({} if weight is None else {"weight": weight})
                for role, weight in messages
            ]
        }
    )


def test_a_demonstration_is_prompt_and_the_runs_own_turns_are_the_completion(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.jsonl"
    demo = ("system", None), ("user", None), ("assistant", 0), ("user", None), ("assistant", 0)
    path.write_text(
        _line(*demo, ("user", None), ("assistant", 1), ("user", None), ("assistant", None)) + "\n"
    )
    [example] = read_examples(path)
    split = prompt_completion(example)
    assert [m["role"] for m in split["prompt"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert [m["role"] for m in split["completion"]] == ["assistant", "user", "assistant"]
    assert all(set(m) == {"role", "content"} for m in split["prompt"] + split["completion"])
    plain = prompt_completion(_EXAMPLE)
    assert len(plain["prompt"]) == 2 and len(plain["completion"]) == 1


def test_bad_data_lines_are_named(tmp_path: Path) -> None:
    cases = [
        ("{not json", "is not JSON"),
        ('{"text": "x"}', "is not a chat example"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "without a role"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "does not end with an assistant"),
        (_line(("user", None), ("assistant", 2)), "weight other than 0 or 1"),
        (_line(("user", 0), ("assistant", None)), "weight other than 0 or 1"),
        (_line(("user", None), ("assistant", 0)), "does not end with an assistant"),
        (_line(("assistant", None), ("user", None), ("assistant", 1)), "starts with an assistant"),
        (
            _line(
                ("user", None),
                ("assistant", 1),
                ("user", None),
                ("assistant", 0),
                ("user", None),
                ("assistant", 1),
            ),
            "weight of 0 after a trained",
        ),
    ]
    for line, words in cases:
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps(_EXAMPLE) + "\n" + line + "\n")
        with pytest.raises(CtxfoldError, match=words) as caught:
            read_examples(path)
        assert f"{path}:2" in str(caught.value)
    path.write_text("\n")
    with pytest.raises(CtxfoldError, match="holds no examples"):
        read_examples(path)


def test_a_base_that_cannot_be_loaded_is_a_one_line_error(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(_EXAMPLE) + "\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    for base in (str(tmp_path / "nothing"), str(tmp_path / "broken")):
        command = ["train", "sft", "--data", str(data), "--base", base, "--out", str(tmp_path)]
        done = subprocess.run(
            [sys.executable, "-m", "ctxfold", *command],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("ctxfold: error: cannot load the base model")
        assert done.stderr.count("\n") == 1, done.stderr


def _finder(messages: list[dict[str, Any]]) -> str:
    text = messages[-1]["content"]
    if "Output" in text:
        return '```python\nanswer["content"] = hits[0]\nanswer["ready"] = True\n```'
    return "```python\nimport re\nhits = re.findall(r'is: (\\d{7})', context)\nprint(hits)\n```"


def _tiny_model(folder: Path) -> Path:
    """A two-layer Qwen2 with random weights and the embedded model's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ctxfold.models.local import ensure_weights

    gguf = ensure_weights("qwen2.5-coder-0.5b")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_rollouts_export_sft_gguf_and_a_run_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("trl")
    rollouts, data = tmp_path / "rollouts", tmp_path / "data.jsonl"
    with FakeOpenAIServer(_finder) as fake:
        model = f"openai:teacher@{fake.base_url}"
        args = ["train", "rollouts", "sniah", "--n", "3", "--lengths", "1000", "--seed", "1"]
        assert main([*args, "--model", model, "--out", str(rollouts), "--quiet"]) == 0
    assert main(["train", "export", str(rollouts), "--out", str(data), "--min-score", "1"]) == 0
    assert len(read_examples(data)) >= 2
    base = _tiny_model(tmp_path / "tiny")
    out = tmp_path / "sft"
    sft = ["train", "sft", "--data", str(data), "--base", str(base), "--out", str(out)]
    assert main([*sft, "--lora-rank", "4", "--max-length", "1024", "--grad-accum", "1"]) == 0
    # the loss is taken on the assistant's replies only: a part of the tokens, not all of them
    trained = re.search(r"trained on ([\d,]+) of ([\d,]+) tokens", capsys.readouterr().err)
    assert trained is not None
    part, whole = (int(n.replace(",", "")) for n in trained.groups())
    assert 0 < part < whole / 2
    gguf = out / "model.gguf"
    assert gguf.stat().st_size > 1_000_000
    assert (out / "loss.png").is_file() and (out / "merged" / "config.json").is_file()
    config = json.loads((out / "sft-config.json").read_text())
    assert config["lora_rank"] == 4 and config["base"] == str(base)
    assert config["loss"] == "assistant" and config["outtype"] == "q8_0"
    # the checkpoint a killed run would go on from
    assert list((out / "checkpoints").glob("checkpoint-*"))
    # the embedded engine runs the result (random weights: any answer, but a whole run)
    with ctxfold.RLM(f"local:{gguf}", budget=ctxfold.Budget(iterations=1)) as rlm:
        result = rlm.run("How long is the input?", "hello world")
    assert result.stop_reason in {"iterations", "ready"} and result.usage.root_calls >= 1
