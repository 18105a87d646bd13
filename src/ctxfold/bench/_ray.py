"""Run bench pairs in parallel on Ray: a local Ray this process starts, or a cluster address.

Each (instance, method) pair is one Ray task that builds its models from the spec's strings and
returns the same row as the local executor; rows are yielded as tasks finish, in finishing order.
A task that raises or whose worker dies becomes an error row. Whatever way the generator ends
(exhausted, closed, or an exception such as Ctrl-C's ``KeyboardInterrupt``), the tasks still
running are cancelled and a Ray started here is shut down and its temporary folder removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxfold.bench._types import Instance
from ctxfold.errors import CtxfoldError

if TYPE_CHECKING:
    from ctxfold.bench.runner import BenchSpec

# Passed to the tasks of a cluster given by address (a local Ray's workers inherit them anyway).
_MODEL_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
_MAX_DETAIL = 4000  # characters of a Ray error kept in the row's traceback


def _remote_one(
    instance: Instance,
    method: str,
    model: str,
    sub_model: str | None,
    iters: int,
    traces: Path | None = None,
    cache: str | None = None,
    subcall_messages: bool = False,
) -> dict[str, Any]:
    """The body of one Ray task: resolve the models, run the pair, close the models."""
    import traceback

    from ctxfold.bench.runner import cached_models, error_row, run_one
    from ctxfold.models import Model, resolve_model

    owned: list[Model] = []
    try:
        root = resolve_model(model)
        owned.append(root)
        sub = root if sub_model in (None, model) else resolve_model(sub_model or model)
        if sub is not root:
            owned.append(sub)
        root, sub = cached_models(cache, root, sub)
        return run_one(
            instance, method, root, sub, iters, traces, subcall_messages=subcall_messages
        )
    except Exception as exc:  # a model that cannot be built fails its pair, not the bench
        error = f"{type(exc).__name__}: {exc}"
        detail = traceback.format_exc(limit=3)
        return error_row(instance, method, model, sub_model or model, error, detail)
    finally:
        for owned_model in owned:
            owned_model.close()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CtxfoldError("--executor ray needs Ray: pip install 'ctxfold[ray]'") from None
    return ray


def default_cpus() -> int:
    """Tasks a local Ray runs at once unless told: the cores, at most 4 (each pair may start a
    sandbox worker and, for ``local`` models, a llama.cpp server)."""
    return max(1, min(4, os.cpu_count() or 1))


def _check_reachable(address: str) -> None:
    """Fail at once on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", "ray://...": left to Ray
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except OSError as exc:
        raise CtxfoldError(f"cannot connect to the Ray cluster at {address}: {exc}") from None


def _start(ray: Any, address: str | None, num_cpus: int | None) -> str | None:
    """``ray.init`` for a new local Ray (returns its temporary folder) or a cluster (None)."""
    # No usage report leaves this machine: the bench may run where only model servers are reached.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        _check_reachable(address)
        env = {name: os.environ[name] for name in _MODEL_ENV if os.environ.get(name)}
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, **common)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise CtxfoldError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        return None
    temp_dir = tempfile.mkdtemp(prefix="ctxfold-ray-")  # short: Ray's socket paths must fit
    try:
        ray.init(
            address="local",  # never attach to some other Ray found on this machine
            num_cpus=num_cpus or default_cpus(),
            include_dashboard=False,
            _temp_dir=temp_dir,
            **common,
        )
    except BaseException:  # Ctrl-C while it starts included: stop what did start
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


def run_on_ray(
    spec: BenchSpec,
    todo: Sequence[tuple[Instance, str]],
    address: str | None,
    *,
    num_cpus: int | None = None,
    traces: Path | None = None,
) -> Generator[dict[str, Any]]:
    """Submit every pair as a Ray task and yield rows as they finish (``traces``: the folder
    where each RLM run's trace is saved, as :func:`~ctxfold.bench.run_one` does).

    Uses the Ray this process is already connected to if there is one; otherwise starts a local
    Ray with ``num_cpus`` task slots (``address`` None) or connects to ``address``.
    """
    if not todo:
        return
    ray = _import_ray()
    started_here = not ray.is_initialized()
    temp_dir = _start(ray, address, num_cpus) if started_here else None
    pending: dict[Any, tuple[Instance, str]] = {}
    try:
        # max_retries=0: a pair whose worker died is recorded as failed, not silently rerun.
        remote = ray.remote(max_retries=0)(_remote_one)
        shared = {id(inst): inst for inst, _ in todo}
        refs = {key: ray.put(inst) for key, inst in shared.items()}  # one copy per instance
        for inst, method in todo:
            ref = remote.remote(
                refs[id(inst)],
                method,
                spec.model,
                spec.sub_model,
                spec.max_iterations,
                traces,
                spec.cache,
                spec.subcall_messages,
            )
            pending[ref] = (inst, method)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            inst, method = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task raised or its worker died
                row = _failed(spec, inst, method, exc)
            yield row
    finally:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or the connection is gone
                logging.getLogger(__name__).debug("could not cancel a Ray task", exc_info=True)
        if started_here:
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _failed(spec: BenchSpec, inst: Instance, method: str, exc: Exception) -> dict[str, Any]:
    from ctxfold.bench.runner import error_row

    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    error = f"{type(exc).__name__}: {first}"
    return error_row(
        inst, method, spec.model, spec.sub_model or spec.model, error, text[-_MAX_DETAIL:]
    )
