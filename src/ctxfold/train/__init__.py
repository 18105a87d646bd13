"""Training models to be better RLMs: rollouts with rewards (the bench's tasks and scorers),
and the kept runs exported as chat-format training examples."""

from ctxfold.train.export import (
    ExportReport,
    RecordedRun,
    export_examples,
    recorded_runs,
    root_conversation,
)

__all__ = ["ExportReport", "RecordedRun", "export_examples", "recorded_runs", "root_conversation"]
