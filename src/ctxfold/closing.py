"""A mixin for objects that hold resources until ``close()``: ``with obj: ...`` closes them."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """``with`` support for a class with a ``close()`` method: entering gives the object itself,
    leaving (normally or by an exception) calls ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
