"""Run bench pairs in parallel on Ray: a local Ray this process starts, or a cluster address."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ctxfold.bench._types import Instance
from ctxfold.errors import CtxfoldError


def _remote_one(
    instance: Instance, method: str, model: str, sub_model: str | None, iters: int
) -> dict[str, Any]:
    from ctxfold.bench.runner import run_one
    from ctxfold.models import resolve_model

    root = resolve_model(model)
    sub = root if sub_model is None or sub_model == model else resolve_model(sub_model)
    try:
        return run_one(instance, method, root, sub, iters)
    finally:
        root.close()
        if sub is not root:
            sub.close()


def run_on_ray(
    spec: Any, todo: Sequence[tuple[Instance, str]], address: str | None
) -> Iterator[dict[str, Any]]:
    """Submit every pair as a Ray task and yield rows as they finish."""
    try:
        import ray
    except ImportError:
        raise CtxfoldError("--executor ray needs Ray: pip install 'ctxfold[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(_remote_one)
        pending = [
            remote.remote(inst, method, spec.model, spec.sub_model, spec.max_iterations)
            for inst, method in todo
        ]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
