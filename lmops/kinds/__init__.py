"""Task kinds: one object per kind owns its inputs, targets, head, prediction, metrics, GX expectations
and the shape of its ingested rows. ``finetune.task`` names one.

A new kind is one new file here (a ``TaskKind`` subclass) and one entry in ``KINDS``. Language models
are evaluated, not fine-tuned: see ``lmops.kinds.language_model``.
"""

from __future__ import annotations

from lmops.kinds.base import TaskKind
from lmops.kinds.entity import EntityKind
from lmops.kinds.sequence import SequenceKind
from lmops.kinds.token import TokenKind

KINDS: dict[str, TaskKind] = {k.name: k for k in (SequenceKind(), EntityKind(), TokenKind())}


def get_kind(name: str) -> TaskKind:
    from lmops.errors import ConfigError

    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"finetune.task {name!r} is not a task kind; choose one of {sorted(KINDS)}") from None


def format_owners() -> dict[str, TaskKind]:
    """Source formats that only one kind can read (CoNLL word tags → token)."""
    return {k.labeled_format: k for k in KINDS.values() if k.owns_format and k.labeled_format}


__all__ = ["KINDS", "TaskKind", "get_kind", "format_owners"]
