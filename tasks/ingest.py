"""Ingest: read each declared source (``readers``), normalize, deduplicate (``dedup``), quarantine what
can't be used, split.

Outputs (in ``out_dir``): ``train/validation/test.parquet`` (labeled: id, text, label, source, date,
entities), ``corpus.parquet`` (unlabeled + labeled-train text for pretraining), ``quarantine.parquet``
(source, file, row, reason, text) and ``summary.json``. For every source
``rows_in == kept + quarantined + duplicates``: no row disappears without a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmops.config import IngestParams, SourceParams
from lmops.errors import DataError
from lmops.kinds import KINDS, TaskKind
from lmops.tasks.dedup import NearDuplicates, text_key
from lmops.tasks.readers import Rejected, Row, read_source
from lmops.text import normalize_text

COLUMNS = ["id", "text", "label", "source", "date", "entities"]
QUARANTINE_COLUMNS = ["source", "file", "row", "reason", "text"]
_SURROGATE = re.compile("[\ud800-\udfff]")



@dataclass
class SourceCounts:
    rows_in: int = 0
    kept: int = 0
    quarantined: int = 0
    duplicates: int = 0  # exact + near duplicates
    near_duplicates: int = 0


@dataclass
class IngestSummary:
    out_dir: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    corpus_rows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, snapshot_dir: Path) -> "IngestSummary":
        """The summary a snapshot was written with (its summary.json)."""
        data = json.loads((snapshot_dir / "summary.json").read_text())
        return cls(out_dir=str(snapshot_dir), sources={k: SourceCounts(**v) for k, v in data["sources"].items()}, splits=data["splits"],
                   corpus_rows=data["corpus_rows"], label_counts=data.get("label_counts", {}))


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Split on paragraph, then sentence boundaries, packing pieces up to ~chunk_chars."""
    if len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for para in text.split("\n\n"):
        if len(para) <= chunk_chars:
            pieces.append(para)
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para):
            # A "sentence" longer than a chunk (no punctuation) is cut hard rather than dropped.
            pieces.extend(sent[i : i + chunk_chars] for i in range(0, len(sent), chunk_chars))
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _collect(params: IngestParams, labels: list[str], summary: IngestSummary, kind: TaskKind):
    """Read and clean every source; returns (labeled rows, corpus rows, quarantine rows)."""
    labeled: list[dict[str, Any]] = []
    corpus: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    near = NearDuplicates(params.near_duplicate_threshold) if params.near_duplicate_threshold else None

    for src in params.sources:
        counts = summary.sources.setdefault(src.name, SourceCounts())
        for item in read_source(src):
            counts.rows_in += 1
            if src.max_rows and counts.rows_in > src.max_rows:
                counts.rows_in -= 1
                break
            if isinstance(item, Rejected):
                counts.quarantined += 1
                quarantine.append({"source": src.name, **asdict(item)})
                continue
            reason, rows = _clean(item, src, params, labels, kind)
            if reason:
                counts.quarantined += 1
                quarantine.append({"source": src.name, "file": item.file, "row": item.row, "reason": reason, "text": item.text[:200]})
                continue
            # Exact duplicates (case/whitespace-insensitive) within a role are counted, not kept.
            # (entity rows repeat their headline: the document is the distinct texts, in order)
            doc = " ".join(dict.fromkeys(r["text"] for r in rows))
            key = (src.role, text_key(doc))
            if key in seen:
                counts.duplicates += 1
                continue
            seen.add(key)
            if near is not None and near.seen_before(src.role, doc):
                counts.duplicates += 1
                counts.near_duplicates += 1
                continue
            counts.kept += 1
            (labeled if src.role == "labeled" else corpus).extend(rows)
    return labeled, corpus, quarantine


def _write_quarantine(quarantine: list[dict[str, Any]], params: IngestParams, out_dir: Path) -> None:
    import pandas as pd

    # Paths relative to their source, so the snapshot (and its DVC md5) is the same on every machine.
    roots = {src.name: Path(src.path) for src in params.sources}
    for rec in quarantine:
        rec["file"] = _relative(Path(rec["file"]), roots[rec["source"]])
        rec["text"] = _SURROGATE.sub("\ufffd", rec.get("text") or "")
    pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).astype({"row": "int64"}).to_parquet(out_dir / "quarantine.parquet", index=False)


def ingest_labeled_only(params: IngestParams, labels: list[str], out_dir: Path, kind: TaskKind = KINDS["sequence"]):
    """Ingest labeled sources without splitting (evaluation files); returns (frame, summary)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    labeled, _, quarantine = _collect(params, labels, summary, kind)
    _write_quarantine(quarantine, params, out_dir)
    return pd.DataFrame(labeled, columns=COLUMNS), summary


def ingest_corpus_only(params: IngestParams, out_dir: Path):
    """Ingest unlabeled sources alone (corpus benchmarks, corpus-only refreshes); returns (frame, summary)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    _, corpus, quarantine = _collect(params, [], summary, KINDS["sequence"])
    for rec in corpus:
        rec.pop("_file"), rec.pop("_row")
    _write_quarantine(quarantine, params, out_dir)
    frame = pd.DataFrame(corpus, columns=COLUMNS)[["id", "text", "source", "date"]]
    frame.to_parquet(out_dir / "corpus.parquet", index=False)
    return frame, summary


def ingest(params: IngestParams, labels: list[str], out_dir: Path, seed: int, kind: TaskKind = KINDS["sequence"]) -> IngestSummary:
    """Read all sources, write the normalized, split snapshot to ``out_dir``.

    The task kind (finetune.task) shapes the labeled rows: ``entity`` gives one row per (headline, entity),
    ``token`` one row per CoNLL sentence with its IOB2 tags as the label (space-separated, one per word).
    """
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    labeled, corpus, quarantine = _collect(params, labels, summary, kind)

    if not labeled:
        raise DataError("ingest kept no labeled rows; see quarantine.parquet for the reasons")
    pinned = {src.name: src.assign_split for src in params.sources if src.assign_split}
    frame = pd.DataFrame(labeled, columns=COLUMNS)
    alone = sorted(src.name for src in params.sources if src.split_alone and not src.assign_split)
    fixed = frame[frame["source"].isin(pinned)]
    free = frame[~frame["source"].isin(pinned) & ~frame["source"].isin(alone)]
    fractions = (0.0 if "validation" in pinned.values() else params.validation_fraction, 0.0 if "test" in pinned.values() else params.test_fraction)
    # Rows of one headline (entity task) share a group, so no headline is in two splits.
    splits = _split(free, *fractions, seed, kind.split_groups(free))
    for name in alone:
        own = frame[frame["source"] == name]
        if len(own):
            for split, part in _split(own, *fractions, seed, kind.split_groups(own)).items():
                splits[split] = pd.concat([splits[split], part], ignore_index=True).sort_values("id").reset_index(drop=True)
    for name in splits:
        extra = fixed[fixed["source"].map(pinned) == name]
        if len(extra):
            splits[name] = pd.concat([splits[name], extra], ignore_index=True).sort_values("id").reset_index(drop=True)
    for name, part in splits.items():
        if part.empty:
            raise DataError(f"the {name} split is empty: add labeled rows, or assign a source to it (ingest.sources[].assign_split)")

    # Leakage guard: no evaluation text may appear in what the model pretrains on.
    eval_keys = {text_key(t) for name in ("validation", "test") for t in splits[name]["text"]}
    corpus_rows = []
    for rec in corpus:
        if text_key(rec["text"]) in eval_keys:
            counts = summary.sources[rec["source"]]
            counts.kept -= 1
            counts.quarantined += 1
            quarantine.append({"source": rec["source"], "file": rec.pop("_file"), "row": rec.pop("_row"), "reason": "leakage: text also in validation/test split", "text": rec["text"][:200]})
            continue
        rec.pop("_file"), rec.pop("_row")
        corpus_rows.append(rec)
    # The labeled train texts are domain text too: pretraining sees them (never val/test).
    corpus_frame = pd.concat(
        [pd.DataFrame(corpus_rows, columns=COLUMNS), splits["train"].assign(label=None, entities=None)],
        ignore_index=True,
    )[["id", "text", "source", "date"]]

    for name, part in splits.items():
        part.to_parquet(out_dir / f"{name}.parquet", index=False)
        summary.splits[name] = len(part)
    corpus_frame.to_parquet(out_dir / "corpus.parquet", index=False)
    _write_quarantine(quarantine, params, out_dir)
    summary.corpus_rows = len(corpus_frame)
    summary.label_counts = {k: int(v) for k, v in kind.label_values(frame["label"]).value_counts().sort_index().items()}
    # The snapshot's bytes must depend only on the data (its DVC md5 is the data version): no run paths.
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.to_dict().items() if k != "out_dir"}, indent=2))
    return summary


def _relative(path: Path, root: Path) -> str:
    if path == root:
        return path.name
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _clean(item: Row, src: SourceParams, params: IngestParams, labels: list[str], kind: TaskKind) -> tuple[str | None, list[dict[str, Any]]]:
    """Return (reason to quarantine, []) or (None, normalized rows); the task kind shapes labeled rows."""
    if "\ufffd" in item.text:
        return "undecodable bytes (not UTF-8); re-encode the file as UTF-8", []
    if _SURROGATE.search(item.text):
        # JSON can spell half a UTF-16 pair (\\ud800); no UTF-8 file can hold it, so Parquet would refuse the row
        return "invalid Unicode: a lone surrogate (half of a UTF-16 pair); fix the escape in the source", []
    if src.role == "labeled":
        return kind.labeled_rows(item, src, params, labels)
    text = normalize_text(item.text)
    if len(text) < params.min_chars:
        return f"text shorter than ingest.min_chars={params.min_chars} ({len(text)} chars)", []
    return None, [
        {"source": src.name, "date": item.date, "id": f"{src.name}:{item.row}:{k}", "text": c, "label": None, "entities": None,
         "_file": item.file, "_row": item.row}
        for k, c in enumerate(chunk_text(text, params.chunk_chars))
    ]


def _split(frame, val_frac: float, test_frac: float, seed: int, groups=None) -> dict[str, Any]:
    """Seeded, stratified train/validation/test split (falls back to unstratified for tiny classes).

    With ``groups`` (a Series aligned with ``frame``), whole groups go to one split, stratified by
    each group's first label. A fraction of 0 leaves that split empty (it is filled from a pinned source).
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    def strat(labels):
        counts = labels.value_counts()
        return labels if len(counts) > 1 and counts.min() >= 2 else None

    def cut(part, frac):
        if frac <= 0 or len(part) < 2:
            return part, part.iloc[0:0]
        return train_test_split(part, test_size=frac, random_state=seed, stratify=strat(part["label"]))

    units = frame if groups is None else frame.assign(_g=groups.values).groupby("_g", sort=True).first().reset_index()
    rest, test = cut(units, test_frac)
    train, val = cut(rest, val_frac / (1 - test_frac) if val_frac else 0.0)
    parts = {"train": train, "validation": val, "test": test}
    if groups is not None:
        member = {name: set(part["_g"]) for name, part in parts.items()}
        parts = {name: frame[groups.isin(member[name]).values] for name in parts}
    return {name: pd.DataFrame(part, columns=frame.columns).sort_values("id").reset_index(drop=True) for name, part in parts.items()}
