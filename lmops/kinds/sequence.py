"""Sentence classification: one label per text (headline sentiment)."""

from __future__ import annotations

from lmops.kinds.base import TaskKind


class SequenceKind(TaskKind):
    name = "sequence"
    description = "sentence classification"
