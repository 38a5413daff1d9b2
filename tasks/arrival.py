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


def take(path: Path, role: str, params: ArrivalParams, dst: Snapshot, known: Snapshot | None = None) -> tuple[Batch, bool]:
    """Make ``path`` a batch of ``dst``; returns (batch, new) where ``new`` is False when the same bytes are already a
    batch there or in ``known`` (the current data)."""
    if role not in ROLES:
        raise UserError(f"role {role!r}: a batch is labeled (text + label) or unlabeled (domain text)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    bid = batch_id(path)
    folder = dst.dir / BATCHES / bid
    for there in (folder, *([known.dir / BATCHES / bid] if known else [])):
        if (there / "batch.json").is_file():
            return Batch(**json.loads((there / "batch.json").read_text())), False
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


def _settled(name: str, mtime: float, settle_s: float, now: float) -> bool:
    """Not hidden, not a partial upload (``x.part``, ``x.tmp``), unchanged for ``settle_s``."""
    return (not name.startswith(".") and Path(name).suffix not in {".part", ".tmp", ".crdownload"} and now - mtime >= settle_s)


class FolderLanding:
    """``<folder>/labeled/`` and ``<folder>/unlabeled/`` on a disk the workers share."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.where = str(folder)

    def landed(self, settle_s: float, now: float | None = None) -> list[tuple[str, str]]:
        now = time.time() if now is None else now
        out = []
        for role in ROLES:
            folder = self.folder / role
            for f in sorted(folder.iterdir()) if folder.is_dir() else []:
                if f.is_file() and _settled(f.name, f.stat().st_mtime, settle_s, now):
                    out.append((str(f), role))
        return out

    def fetch(self, items: list[tuple[str, str]], work: Path) -> list[tuple[Path, str]]:
        return [(Path(ref), role) for ref, role in items]

    def file_away(self, items: list[tuple[str, str]], outcome: str, reason: str | None = None) -> list[str]:
        return file_away([Path(ref) for ref, _ in items], self.folder, outcome, reason)


class S3Landing:
    """The same under an object-store prefix (``s3://bucket/prefix``): objects are downloaded to hand them in, then
    moved under ``<prefix>/accepted/`` or ``<prefix>/rejected/`` (with ``<name>.reason.txt``)."""

    def __init__(self, url: str):
        import boto3

        self.bucket, _, prefix = url[len("s3://"):].partition("/")
        self.prefix = prefix.strip("/")
        self.where = url
        self.s3 = boto3.client("s3")  # AWS_ENDPOINT_URL / AWS_* from the environment, as every AWS tool reads them

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def landed(self, settle_s: float, now: float | None = None) -> list[tuple[str, str]]:
        now = time.time() if now is None else now
        out = []
        for role in ROLES:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(role) + "/")
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if name and obj["Key"] == self._key(role, name) and _settled(name, obj["LastModified"].timestamp(), settle_s, now):
                        out.append((obj["Key"], role))
        return sorted(out)

    def fetch(self, items: list[tuple[str, str]], work: Path) -> list[tuple[Path, str]]:
        out = []
        for key, role in items:
            local = work / role / key.rsplit("/", 1)[-1]
            local.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, key, str(local))
            out.append((local, role))
        return out

    def file_away(self, items: list[tuple[str, str]], outcome: str, reason: str | None = None) -> list[str]:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        moved = []
        for key, _ in items:
            name = key.rsplit("/", 1)[-1]
            target = self._key(outcome, stamp, name)
            self.s3.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
            self.s3.delete_object(Bucket=self.bucket, Key=key)
            if reason:
                self.s3.put_object(Bucket=self.bucket, Key=f"{target}.reason.txt", Body=(reason + "\n").encode())
            moved.append(f"s3://{self.bucket}/{target}")
        return moved


def landing_of(params: ArrivalParams, root: Path):
    """Where files land: the object-store prefix when ``arrival.landing_url`` is set, else the folder."""
    return S3Landing(params.landing_url) if params.landing_url else FolderLanding(root / params.landing_dir)


def landed(landing: Path, settle_s: float, now: float | None = None) -> list[tuple[Path, str]]:
    """Settled files in ``landing/labeled/`` and ``landing/unlabeled/`` (a copy still being written is left for the
    next look); hidden and partial names (``.x``, ``x.part``, ``x.tmp``) are skipped."""
    return [(Path(ref), role) for ref, role in FolderLanding(landing).landed(settle_s, now)]


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
