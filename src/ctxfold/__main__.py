"""``python -m ctxfold`` runs the command line."""

from ctxfold.cli import _entry

_entry()
