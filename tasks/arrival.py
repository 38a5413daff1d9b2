"""Data arrival: files handed in between runs become batches inside the data snapshot.

A batch is one file, named by the hash of its bytes, kept with how to read it under
``<snapshot>/batches/<id>/`` (``batch.json`` + the file). Batches are part of the DVC version, so a fresh
clone that pulls ``data/`` has them, and every later ingest reads them next to the sources in params (each
batch split among its own rows, so adding one moves no earlier row between splits). The same bytes handed
in twice are one batch: the second time adds nothing and triggers nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmops.config import ArrivalParams, SourceParams
from lmops.errors import UserError
from lmops.layout import Snapshot
from lmops.tasks.version import BATCHES

FORMATS = {".csv": "csv", ".tsv": "csv", ".gz": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text_lines"}
ROLES = ("labeled", "unlabeled")


@dataclass
class Batch:
    id: str
    file: str
    role: str
    format: str
    added: str
    text_column: str = "text"
    label_column: str | None = "label"
    label_map: dict[str, str] = field(default_factory=dict)

    @property
    def source_name(self) -> str:
        return f"batch-{self.id}"


def batch_id(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: lmops cannot tell how to read a {path.suffix or 'suffix-less'} file; hand in one of "
                        f"{', '.join(sorted(FORMATS))} (CSV/TSV may be gzipped: .csv.gz)")
    return fmt


def batches(snapshot: Snapshot) -> list[Batch]:
    """The batches a snapshot holds, oldest first."""
    folder = snapshot.dir / BATCHES
    found = [Batch(**json.loads(f.read_text())) for f in folder.glob("*/batch.json")] if folder.is_dir() else []
    return sorted(found, key=lambda b: (b.added, b.id))


def carry(src: Snapshot, dst: Snapshot) -> list[Batch]:
    """Copy the batches of ``src`` (the current ``data/``) into ``dst`` (a run's snapshot), so the run ingests them."""
    if (src.dir / BATCHES).is_dir():
        shutil.copytree(src.dir / BATCHES, dst.dir / BATCHES, dirs_exist_ok=True)
    return batches(dst)


def take(path: Path, role: str, params: ArrivalParams, dst: Snapshot) -> tuple[Batch, bool]:
    """Make ``path`` a batch of ``dst``; returns (batch, new) where ``new`` is False when the same bytes are there."""
    if role not in ROLES:
        raise UserError(f"role {role!r}: a batch is labeled (text + label) or unlabeled (domain text)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    bid = batch_id(path)
    folder = dst.dir / BATCHES / bid
    if (folder / "batch.json").is_file():
        return Batch(**json.loads((folder / "batch.json").read_text())), False
    b = Batch(id=bid, file=path.name, role=role, format=format_of(path), added=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              text_column=params.text_column, label_column=params.label_column if role == "labeled" else None,
              label_map=dict(params.label_map))
    folder.mkdir(parents=True)
    shutil.copy2(path, folder / b.file)
    (folder / "batch.json").write_text(json.dumps(asdict(b), indent=2))
    return b, True


def sources(snapshot: Snapshot) -> list[SourceParams]:
    """Ingest sources for the batches of ``snapshot``, read in place."""
    return [SourceParams(name=b.source_name, role=b.role, format=b.format, path=str(snapshot.dir / BATCHES / b.id / b.file),
                         text_column=b.text_column, label_column=b.label_column, label_map=b.label_map, split_alone=True)
            for b in batches(snapshot)]


def labeled_rows(summary: dict) -> int:
    return sum(summary.get("splits", {}).values())


def landed(landing: Path, settle_s: float, now: float | None = None) -> list[tuple[Path, str]]:
    """Files in ``landing/labeled/`` and ``landing/unlabeled/`` unchanged for ``settle_s`` (a copy still being
    written is left for the next look); hidden and partial names (``.x``, ``x.part``, ``x.tmp``) are skipped."""
    now = time.time() if now is None else now
    out = []
    for role in ROLES:
        folder = landing / role
        for f in sorted(folder.iterdir()) if folder.is_dir() else []:
            if f.is_file() and not f.name.startswith(".") and f.suffix not in {".part", ".tmp", ".crdownload"}:
                if now - f.stat().st_mtime >= settle_s:
                    out.append((f, role))
    return out


def file_away(files: list[Path], landing: Path, outcome: str, reason: str | None = None) -> list[str]:
    """Move handled files to ``landing/accepted/`` or ``landing/rejected/`` (with ``<name>.reason.txt``), so the
    folder people drop into only holds what is still to come."""
    dest = landing / outcome / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in files:
        target = dest / f.name
        shutil.move(str(f), target)
        if reason:
            (dest / f"{f.name}.reason.txt").write_text(reason + "\n")
        moved.append(str(target))
    return moved
