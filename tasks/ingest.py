"""Ingest: read each declared source (``readers``), normalize, deduplicate (``dedup``), quarantine what
can't be used, split.

Outputs (in ``out_dir``): ``train/validation/test.parquet`` (labeled: id, text, label, source, date,
entities), ``corpus.parquet`` (unlabeled + labeled-train text for pretraining), ``quarantine.parquet``
(source, file, row, reason, text) and ``summary.json``. For every source
``rows_in == kept + quarantined + duplicates``: no row disappears without a reason.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from lmops.config import IngestParams, SourceParams
from lmops.errors import DataError
from lmops.kinds import KINDS, TaskKind
from lmops.tasks.dedup import words_key
from lmops.tasks.readers import Rejected, Row, read_source
from lmops.text import _kernels, normalize_text

COLUMNS = ["id", "text", "label", "source", "date", "entities"]
CORPUS_COLUMNS = ["id", "text", "source", "date"]
QUARANTINE_COLUMNS = ["source", "file", "row", "reason", "text"]
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return _kernels.has_surrogate(text) if _kernels is not None else _SURROGATE.search(text) is not None


@dataclass
class SourceCounts:
    rows_in: int = 0
    kept: int = 0
    quarantined: int = 0
    duplicates: int = 0  # exact + near duplicates
    near_duplicates: int = 0
    boilerplate_lines: int = 0  # page-furniture lines removed from this source's documents


@dataclass
class IngestSummary:
    out_dir: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    corpus_rows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    auxiliary_rows: int = 0  # headlines kept for their entity labels alone (auxiliary.parquet)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # a count that is 0 stays out: snapshots without boilerplate keep the bytes (and data version) they had
        # before boilerplate was removed at all
        for counts in d["sources"].values():
            if not counts["boilerplate_lines"]:
                del counts["boilerplate_lines"]
        if not d["auxiliary_rows"]:
            del d["auxiliary_rows"]
        return d

    @classmethod
    def read(cls, snapshot_dir: Path) -> "IngestSummary":
        """The summary a snapshot was written with (its summary.json)."""
        data = json.loads((snapshot_dir / "summary.json").read_text())
        return cls(out_dir=str(snapshot_dir), sources={k: SourceCounts(**v) for k, v in data["sources"].items()}, splits=data["splits"],
                   corpus_rows=data["corpus_rows"], label_counts=data.get("label_counts", {}), auxiliary_rows=data.get("auxiliary_rows", 0))


# a sentence's end and the whitespace after it, the end captured: re.split then returns [sentence, end, sentence,
# end, ..., rest] in C, several times faster than a split on r"(?<=[.!?])\s+", whose look-behind is tried at every
# position, or a Python loop over the matches
_SENTENCE_END = re.compile(r"([.!?])\s+")


def _sentences(para: str) -> list[str]:
    parts = _SENTENCE_END.split(para)
    out = [s + end for s, end in zip(parts[0::2], parts[1::2])]
    out.append(parts[-1])
    return out


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Split on paragraph, then sentence boundaries, packing pieces up to ~chunk_chars."""
    if _kernels is not None:
        return _kernels.chunk(text, chunk_chars)
    return chunk_text_py(text, chunk_chars)


def chunk_text_py(text: str, chunk_chars: int) -> list[str]:
    """chunk_text in Python: the definition the compiled kernel is tested against, and the fallback."""
    if len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for para in text.split("\n\n"):
        if len(para) <= chunk_chars:
            pieces.append(para)
            continue
        for sent in _sentences(para):
            if len(sent) > chunk_chars:
                # A "sentence" longer than a chunk (no punctuation) is cut hard rather than dropped.
                pieces.extend(sent[i : i + chunk_chars] for i in range(0, len(sent), chunk_chars))
            elif sent:  # (the empty rest after a paragraph's final stop, in text not normalized)
                pieces.append(sent)
    # Packed by their lengths, each chunk joined once (not grown a piece at a time): a chunk is the pieces
    # start..i joined by spaces, and an empty chunk so far is replaced by the next piece rather than joined to it.
    chunks: list[str] = []
    start = size = 0
    for i, n in enumerate(map(len, pieces)):
        if not size:
            start, size = i, n
        elif size + 1 + n > chunk_chars:
            chunks.append(" ".join(pieces[start:i]))
            start, size = i, n
        else:
            size += 1 + n
    if size:
        chunks.append(" ".join(pieces[start:]))
    return chunks


@dataclass
class CleanedBatch:
    """One batch of one source after cleaning (where the engine ran it): what to quarantine, and the surviving
    documents with their duplicate keys and signatures. Documents are decided later, all at once (``dedup.resolve``)."""

    source: int  # index into ingest.sources
    rows_in: int
    boilerplate_lines: int
    quarantined: int
    docs: int  # the documents' rows and the quarantine records are in the batch's spill file
    keys: Any  # (n,) V16
    sigs: Any  # (n, 64) uint64
    has_sig: Any  # (n,) bool
    roles: Any = None  # (n,) dedup role codes where they differ from the source's role (auxiliary rows), else None
    held: Any = None  # (documents' rows, quarantine records) where the batch was not spilled, else None


def clean_batch(items: list, source: int, params: IngestParams, labels: list[str], kind_name: str, spill: str | None,
                boiler=None) -> CleanedBatch:
    """Normalize, shape and sign one batch of records; write its rows and quarantine records to ``spill`` (a pickle;
    with None they come back in ``held``) and return only counts and fixed-width arrays. Pure but for that file:
    runs in this process or on a Dask worker (which then needs the spill folder: local workers share this disk; a
    cluster, a shared file system). ``boiler``: the ingest's Boilerplate (one for all its batches, so that the
    verdicts it remembers on short lines carry from batch to batch), else a new one."""
    import pickle

    import numpy as np

    from lmops.tasks.dedup import PERMS, exact_keys, minhasher, role_code, sign_documents

    src, kind = params.sources[source], KINDS[kind_name]
    boiler = boiler or _boilerplate(params)
    quarantine: list[dict[str, Any]] = []
    docs: list[list[dict[str, Any]]] = []  # the rows of each document (entity rows repeat their headline; chunks)
    texts, removed_lines = [], 0
    for item in items:
        if isinstance(item, Rejected):
            quarantine.append({"source": src.name, **asdict(item)})
            continue
        reason, rows, removed = _clean(item, src, params, labels, kind, boiler)
        removed_lines += removed
        if reason:
            quarantine.append({"source": src.name, "file": item.file, "row": item.row, "reason": reason, "text": item.text[:200]})
            continue
        docs.append(rows)
        texts.append(list(dict.fromkeys(r["text"] for r in rows)))  # signed as joined by spaces, without the join
    if spill is not None:
        with open(spill, "wb") as fh:
            pickle.dump((docs, quarantine), fh, protocol=pickle.HIGHEST_PROTOCOL)
    # a labeled document without a label (mixed_entities: auxiliary) is deduplicated apart from the labeled ones
    roles = ["auxiliary" if src.role == "labeled" and rows[0]["label"] is None else src.role for rows in docs]
    signed = sign_documents(roles, texts)  # words, exact key and MinHash bins in one pass per document
    out = CleanedBatch(source, len(items), removed_lines, len(quarantine), len(docs), exact_keys(roles, texts, signed), None, None,
                       held=None if spill is not None else (docs, quarantine))
    if any(r != src.role for r in roles):
        out.roles = np.array([role_code(r) for r in roles], dtype=np.uint8)
    if params.near_duplicate_threshold:
        out.sigs, out.has_sig = minhasher().signatures(texts, signed)
    else:
        out.sigs, out.has_sig = np.zeros((len(texts), PERMS), dtype=np.uint64), np.zeros(len(texts), dtype=bool)
    return out


def _boilerplate(params: IngestParams):
    from lmops.text import Boilerplate

    b = params.boilerplate
    return Boilerplate(b.line_patterns, b.repeated_line_min, b.repeated_line_max_chars)


def _batches(params: IngestParams, labels: list[str], kind: TaskKind, roles: set[str], spill: Path, hold: int = 0):
    """(clean_batch arguments) per batch of records, source after source; a batch closes at ingest.batch_rows
    records or ingest.batch_chars characters. The first batches, up to ``hold`` characters, stay in memory (no
    spill file); the rest spill."""
    k = held = 0
    # one for the whole ingest: on the 10-K sample a new one per batch sent 0.02 s more of short lines to the regex
    boiler = _boilerplate(params)

    def where(chars: int) -> str | None:
        nonlocal held
        held += chars
        return None if held <= hold else str(spill / f"batch-{k:07d}.pkl")

    for s, src in enumerate(params.sources):
        if src.role not in roles:
            continue
        batch: list = []
        chars = n = 0
        for item in read_source(src):
            n += 1
            if src.max_rows and n > src.max_rows:
                break
            batch.append(item)
            chars += len(getattr(item, "text", "") or "")
            if len(batch) >= params.batch_rows or chars >= params.batch_chars:
                yield (batch, s, params, labels, kind.name, where(chars), boiler)
                batch, chars, k = [], 0, k + 1
        if batch:
            yield (batch, s, params, labels, kind.name, where(chars), boiler)
            k += 1


def _short_documents(args: tuple) -> bool:
    """Whether a batch's records are too short on average for the text kernels to release the GIL on them (or no
    kernels were built): such a batch gains nothing from another thread (on a corpus of 7,500-character documents
    two threads were 7-15% slower than one), so the local engine cleans it on the reading thread."""
    if _kernels is None:
        return True
    items = args[0]
    return sum(len(getattr(item, "text", "") or "") for item in items) < _kernels.RELEASE_GIL_CHARS * len(items)


class _Collected:
    """Pass 1's results, spilled: the documents and quarantine records of each batch in a pickle (but those of the
    batches held in memory, up to ``ingest.hold_chars``), the signatures in one binary file; in memory only a few
    arrays of fixed width per document. Pass 2 (``labeled``, ``corpus``, ``quarantine``) reads the batches back in
    order, keeping the documents ``dedup.resolve`` kept."""

    def __init__(self, spill: Path, params: IngestParams):
        self.spill, self.params = spill, params
        self.batches: list[tuple[int, int, int]] = []  # (source index, first document, documents)
        self._quarantined: list[int] = []  # quarantine records per batch
        self._held: dict[int, Any] = {}  # batch -> (documents' rows, quarantine records), where not spilled
        self._keys, self._roles, self._has, self._bands, self._src = [], [], [], [], []
        self._sigs = open(spill / "sigs.u64", "wb")
        self.docs = 0
        self.kept = None

    def add(self, b: CleanedBatch) -> None:
        import numpy as np

        from lmops.tasks.dedup import band_hashes, role_code

        n = b.docs
        if b.held is not None:
            self._held[len(self.batches)] = b.held
        self.batches.append((b.source, self.docs, n))
        self._quarantined.append(b.quarantined)
        self._keys.append(b.keys)
        self._roles.append(b.roles if b.roles is not None else np.full(n, role_code(self.params.sources[b.source].role), dtype=np.uint8))
        self._has.append(b.has_sig)
        self._bands.append(band_hashes(b.sigs))
        self._src.append(np.full(n, b.source, dtype=np.int32))
        self._sigs.write(np.ascontiguousarray(b.sigs, dtype=np.uint64).tobytes())
        self.docs += n

    def resolve(self, summary: IngestSummary) -> None:
        import numpy as np

        from lmops.tasks.dedup import BANDS, PERMS, resolve

        self._sigs.close()
        cat = (lambda parts, dtype, shape=(0,): np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype))
        keys, roles, has = cat(self._keys, "V16"), cat(self._roles, np.uint8), cat(self._has, bool)
        bands, src = cat(self._bands, np.uint32, (0, BANDS)), cat(self._src, np.int32)
        self._keys = self._roles = self._has = self._bands = self._src = []
        sigs = np.memmap(self.spill / "sigs.u64", dtype=np.uint64, mode="r", shape=(self.docs, PERMS)) if self.docs else np.zeros((0, PERMS), np.uint64)
        found = resolve(keys, roles, has, bands, sigs, self.params.near_duplicate_threshold)
        del sigs
        self.kept = ~(found["exact"] | found["near"])
        per = len(self.params.sources)
        docs = np.bincount(src, minlength=per)
        dups = np.bincount(src, weights=~self.kept, minlength=per).astype(int)
        near = np.bincount(src, weights=found["near"], minlength=per).astype(int)
        for s, spec in enumerate(self.params.sources):
            if spec.name in summary.sources:
                c = summary.sources[spec.name]
                c.kept += int(docs[s] - dups[s])
                c.duplicates += int(dups[s])
                c.near_duplicates += int(near[s])

    def _read(self, i: int):
        import pickle

        if i in self._held:
            return self._held[i]
        with open(self.spill / f"batch-{i:07d}.pkl", "rb") as fh:
            return pickle.load(fh)

    def rows(self, role: str) -> Iterator[dict[str, Any]]:
        """The kept documents' rows of one role, in source and record order."""
        for i, (s, first, n) in enumerate(self.batches):
            if self.params.sources[s].role != role or not n:
                continue
            docs, _ = self._read(i)
            for d, rows in enumerate(docs):
                if self.kept[first + d]:
                    yield from rows

    def quarantine(self) -> Iterator[dict[str, Any]]:
        for i, n in enumerate(self._quarantined):
            if n:  # (a batch read only for its quarantine records when it has some)
                yield from self._read(i)[1]


def _collect(params: IngestParams, labels: list[str], summary: IngestSummary, kind: TaskKind, spill: Path,
             roles: tuple[str, ...] = ("labeled", "unlabeled")) -> _Collected:
    """Pass 1 (read, clean, sign every batch on the engine; spill) and the duplicate decision."""
    from tqdm.auto import tqdm

    from lmops.tasks.engine import open_engine

    collected = _Collected(spill, params)
    for src in params.sources:
        if src.role in roles:
            summary.sources.setdefault(src.name, SourceCounts())
    engine = open_engine(params.engine)
    bar = tqdm(desc="ingest", unit="rows", disable=None, mininterval=2.0)
    try:
        # batches cleaned on other processes always spill (their rows would otherwise travel back to this one)
        hold = params.hold_chars if engine.in_process else 0
        for b in engine.map(clean_batch, _batches(params, labels, kind, set(roles), spill, hold), inline=_short_documents):
            c = summary.sources[params.sources[b.source].name]
            c.rows_in += b.rows_in
            c.quarantined += b.quarantined
            c.boilerplate_lines += b.boilerplate_lines
            collected.add(b)
            bar.update(b.rows_in)
    finally:
        bar.close()
        engine.close()
    collected.resolve(summary)
    return collected


# a Parquet output's buffer: one row group of up to this many characters of text or rows
SINK_CHARS, SINK_ROWS = 32_000_000, 1_000_000


class _Sink:
    """A Parquet file written as records arrive. Output that fits one buffer is written by the same pandas call
    as always (so a small snapshot's bytes, and its data version, do not depend on this class); past the buffer
    it is written a row group at a time with a fixed schema, so memory stays bounded."""

    def __init__(self, path: Path, columns: list[str], schema, to_frame):
        self.path, self.columns, self.schema, self.to_frame = path, columns, schema, to_frame
        self.records: list[dict[str, Any]] = []
        self.chars = 0
        self.rows = 0
        self._writer = None

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self.rows += 1
        self.chars += len(rec.get("text") or "")
        if len(self.records) >= SINK_ROWS or self.chars >= SINK_CHARS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        if self.records:
            self._writer.write_table(pa.Table.from_pylist([{c: r.get(c) for c in self.columns} for r in self.records], schema=self.schema))
        self.records, self.chars = [], 0

    def close(self, tail=None) -> None:
        """Write what is buffered, then ``tail`` (a frame with the same columns) after it."""
        if self._writer is None:
            self.to_frame(self.records, tail).to_parquet(self.path, index=False)
            self.records = []
            self.rows += 0 if tail is None else len(tail)
            return
        for start in range(0, 0 if tail is None else len(tail), 100_000):
            for rec in tail.iloc[start : start + 100_000].to_dict("records"):
                self.add(rec)
        self._flush()
        self._writer.close()


def _corpus_sink(path: Path) -> _Sink:
    import pandas as pd
    import pyarrow as pa

    def frame(records, tail):
        parts = [pd.DataFrame(records, columns=COLUMNS)] + ([tail.assign(label=None, entities=None)] if tail is not None else [])
        return (pd.concat(parts, ignore_index=True) if tail is not None else parts[0])[CORPUS_COLUMNS]

    return _Sink(path, CORPUS_COLUMNS, pa.schema([(c, pa.string()) for c in CORPUS_COLUMNS]), frame)


def _quarantine_sink(path: Path, params: IngestParams) -> _Sink:
    import pandas as pd
    import pyarrow as pa

    # Paths relative to their source, so the snapshot (and its DVC md5) is the same on every machine.
    roots = {src.name: Path(src.path) for src in params.sources}

    class Quarantine(_Sink):
        def add(self, rec):
            rec["file"] = _relative(Path(rec["file"]), roots[rec["source"]])
            rec["text"] = _SURROGATE.sub("\ufffd", rec.get("text") or "")
            super().add(rec)

    schema = pa.schema([("source", pa.string()), ("file", pa.string()), ("row", pa.int64()), ("reason", pa.string()), ("text", pa.string())])
    return Quarantine(path, QUARANTINE_COLUMNS, schema,
                      lambda records, tail: pd.DataFrame(records, columns=QUARANTINE_COLUMNS).astype({"row": "int64"}))


@contextmanager
def _spilled(out_dir: Path) -> Iterator[Path]:
    """A spill folder for one ingest, removed when it ends (however it ends)."""
    import tempfile

    # beside the snapshot (the same disk, which has room for it), never inside it: the folder's md5 is the data version
    spill = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.ingest-", dir=out_dir.parent))
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def ingest_labeled_only(params: IngestParams, labels: list[str], out_dir: Path, kind: TaskKind = KINDS["sequence"]):
    """Ingest labeled sources without splitting (evaluation files); returns (frame, summary)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    with _spilled(out_dir) as spill:
        collected = _collect(params, labels, summary, kind, spill, roles=("labeled",))
        frame = pd.DataFrame(list(collected.rows("labeled")), columns=COLUMNS)
        _write_quarantine(collected.quarantine(), params, out_dir)
    return frame, summary


def ingest_corpus_only(params: IngestParams, out_dir: Path, read_back: bool = True):
    """Ingest unlabeled sources alone (corpus benchmarks, corpus-only refreshes, LM evaluation files); returns (the
    corpus as a frame, summary), or (None, summary) with ``read_back`` false: a caller that needs only the Parquet
    file does not load a corpus larger than memory back into it (the row count is ``summary.corpus_rows``)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    with _spilled(out_dir) as spill:
        collected = _collect(params, [], summary, KINDS["sequence"], spill, roles=("unlabeled",))
        sink = _corpus_sink(out_dir / "corpus.parquet")
        for rec in collected.rows("unlabeled"):
            rec.pop("_file"), rec.pop("_row")
            sink.add(rec)
        sink.close()
        _write_quarantine(collected.quarantine(), params, out_dir)
    summary.corpus_rows = sink.rows
    return (pd.read_parquet(out_dir / "corpus.parquet") if read_back else None), summary


def _write_quarantine(records, params: IngestParams, out_dir: Path, more=()) -> None:
    sink = _quarantine_sink(out_dir / "quarantine.parquet", params)
    for rec in records:
        sink.add(rec)
    for rec in more:
        sink.add(rec)
    sink.close()


def ingest(params: IngestParams, labels: list[str], out_dir: Path, seed: int, kind: TaskKind = KINDS["sequence"]) -> IngestSummary:
    """Read all sources, write the normalized, split snapshot to ``out_dir``.

    The task kind (finetune.task) shapes the labeled rows: ``entity`` gives one row per (headline, entity),
    ``token`` one row per CoNLL sentence with its IOB2 tags as the label (space-separated, one per word).
    Memory is bounded by the labeled rows (split in memory) and a few bytes per corpus document: the corpus
    streams from the sources to ``corpus.parquet`` through spilled batches.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(out_dir=str(out_dir))
    with _spilled(out_dir) as spill:
        _ingest(params, labels, out_dir, seed, kind, summary, spill)
    return summary


def _ingest(params: IngestParams, labels: list[str], out_dir: Path, seed: int, kind: TaskKind, summary: IngestSummary, spill: Path) -> None:
    import pandas as pd

    collected = _collect(params, labels, summary, kind, spill)
    labeled = list(collected.rows("labeled"))
    pinned = {src.name: src.assign_split for src in params.sources if src.assign_split}
    frame = pd.DataFrame(labeled, columns=COLUMNS)
    del labeled
    # rows without a label of their own (mixed_entities: auxiliary) train on their entity labels only: never split
    auxiliary = frame[frame["label"].isna()].reset_index(drop=True)
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError("ingest kept no labeled rows; see quarantine.parquet for the reasons")
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
    eval_keys = {words_key(t) for name in ("validation", "test") for t in splits[name]["text"]}
    leaked: list[dict[str, Any]] = []

    def leak(rec, file, row):
        counts = summary.sources[rec["source"]]
        counts.kept -= 1
        counts.quarantined += 1
        leaked.append({"source": rec["source"], "file": file, "row": row, "reason": "leakage: text also in validation/test split",
                       "text": rec["text"][:200]})

    if len(auxiliary):
        # an auxiliary headline is training data: one that is also an evaluation text goes to quarantine
        clean, paths = [], {src.name: src.path for src in params.sources}
        for rec in auxiliary.to_dict("records"):
            if words_key(rec["text"]) in eval_keys:
                leak(rec, paths[rec["source"]], int(rec["id"].rsplit(":", 1)[1]))
            else:
                clean.append(rec)
        auxiliary = pd.DataFrame(clean, columns=COLUMNS)
        auxiliary.to_parquet(out_dir / "auxiliary.parquet", index=False)
        summary.auxiliary_rows = len(auxiliary)
    corpus = _corpus_sink(out_dir / "corpus.parquet")
    for rec in collected.rows("unlabeled"):
        file, row = rec.pop("_file"), rec.pop("_row")
        if words_key(rec["text"]) in eval_keys:
            leak(rec, file, row)
            continue
        corpus.add(rec)
    # The labeled train texts are domain text too: pretraining sees them (never val/test).
    corpus.close(tail=splits["train"])

    for name, part in splits.items():
        part.to_parquet(out_dir / f"{name}.parquet", index=False)
        summary.splits[name] = len(part)
    _write_quarantine(collected.quarantine(), params, out_dir, more=leaked)
    summary.corpus_rows = corpus.rows
    summary.label_counts = {k: int(v) for k, v in kind.label_values(frame["label"]).value_counts().sort_index().items()}
    # The snapshot's bytes must depend only on the data (its DVC md5 is the data version): no run paths.
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.to_dict().items() if k != "out_dir"}, indent=2))


def _relative(path: Path, root: Path) -> str:
    if path == root:
        return path.name
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _clean(item: Row, src: SourceParams, params: IngestParams, labels: list[str], kind: TaskKind, boiler) -> tuple[str | None, list[dict[str, Any]], int]:
    """(reason to quarantine, [], lines removed) or (None, normalized rows, boilerplate lines removed); the task
    kind shapes labeled rows, page furniture is removed from unlabeled ones."""
    if "\ufffd" in item.text:
        return "undecodable bytes (not UTF-8); re-encode the file as UTF-8", [], 0
    if _has_surrogate(item.text):
        # JSON can spell half a UTF-16 pair (\\ud800); no UTF-8 file can hold it, so Parquet would refuse the row
        return "invalid Unicode: a lone surrogate (half of a UTF-16 pair); fix the escape in the source", [], 0
    if src.unescape_html:
        item = replace(item, text=html.unescape(item.text), words=[html.unescape(w) for w in item.words] if item.words else item.words)
    if src.role == "labeled":
        return (*kind.labeled_rows(item, src, params, labels), 0)
    raw, removed = boiler.strip(item.text)
    text = normalize_text(raw)
    if len(text) < params.min_chars:
        return f"text shorter than ingest.min_chars={params.min_chars} ({len(text)} chars)", [], removed
    return None, [
        {"source": src.name, "date": item.date, "id": f"{src.name}:{item.row}:{k}", "text": c, "label": None, "entities": None,
         "_file": item.file, "_row": item.row}
        for k, c in enumerate(chunk_text(text, params.chunk_chars))
    ], removed


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
