"""The ``verifiers`` environment ``ctxfold-rl``: ``vf-eval ctxfold-rl -m MODEL ...`` rolls RLMs out
on ctxfold's generated tasks (see :mod:`ctxfold.train.rl`). ``verifiers`` finds an environment by
importing a top-level module named after its id, and takes the taskset and the harness this
module exports."""

from ctxfold.train.rl import CtxfoldHarness, CtxfoldTaskset

__all__ = ["CtxfoldHarness", "CtxfoldTaskset"]
