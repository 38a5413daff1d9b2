"""Ingest: read each declared source, normalize, quarantine what can't be used, split.

Outputs (in ``out_dir``): ``train/validation/test.parquet`` (labeled: id, text, label, source, date,
entities), ``corpus.parquet`` (unlabeled + labeled-train text for pretraining), ``quarantine.parquet``
(source, file, row, reason, text) and ``summary.json``. For every source
``rows_in == kept + quarantined + duplicates``: no row disappears without a reason.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lmops.config import IngestParams, SourceParams
from lmops.errors import DataError, UserError
from lmops.kinds import KINDS, TaskKind
from lmops.text import normalize_text

COLUMNS = ["id", "text", "label", "source", "date", "entities"]
QUARANTINE_COLUMNS = ["source", "file", "row", "reason", "text"]

_SENTFIN_PAIR = re.compile(r"(?:^\{|,)\s*'(.+?)'\s*:\s*'(positive|negative|neutral)'")
_FOMC_DATE = re.compile(r"MeetingDate=(\d{4}-\d{2}-\d{2})")


@dataclass
class Row:
    text: str
    file: str
    row: int  # 1-based data row number within the file (header excluded)
    label: str | None = None
    date: str | None = None
    entities: dict[str, str] | None = None
    tags: list[str] | None = None  # conll: one tag per word; text is then the words joined by spaces
    words: list[str] | None = None


@dataclass
class Rejected:
    file: str
    row: int
    reason: str
    text: str = ""


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


# format name (ingest.sources[].format) -> reader: a new data format is a function registered here with
# @source_reader("name") that yields Row (or Rejected, with the reason) per record, and its name in SourceParams.format.
READERS: dict[str, Callable[[SourceParams], Iterator[Row | Rejected]]] = {}


def source_reader(fmt: str):
    def register(fn):
        READERS[fmt] = fn
        return fn

    return register


def _label(value: Any) -> str | None:
    """A raw label as the string label_map keys are written in (Parquet/JSON ints and strings alike)."""
    return None if value is None else str(value)


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    # utf-8-sig strips a BOM; undecodable bytes become U+FFFD and are caught per row below.
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")


def parse_sentfin_decisions(raw: str) -> dict[str, str]:
    """SEntFiN's ``Decisions`` is a Python dict literal; 13 rows have unescaped apostrophes."""
    try:
        value = ast.literal_eval(raw)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    except (ValueError, SyntaxError):
        pass
    pairs = _SENTFIN_PAIR.findall(raw.strip())
    if not pairs:
        raise ValueError(f"cannot parse Decisions {raw[:80]!r}")
    return dict(pairs)


@source_reader("sentfin")
def _read_sentfin(src: SourceParams) -> Iterator[Row | Rejected]:
    path = Path(src.path)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = {"Title", "Decisions"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: SEntFiN format needs columns Title and Decisions; missing {sorted(missing)}")
        for i, rec in enumerate(reader, start=1):
            title = rec.get("Title") or ""
            try:
                entities = parse_sentfin_decisions(rec.get("Decisions") or "")
            except ValueError as exc:
                yield Rejected(str(path), i, f"unparseable Decisions: {exc}", title)
                continue
            labels = set(entities.values())
            label = labels.pop() if len(labels) == 1 else None
            yield Row(title, str(path), i, label=label, entities=entities)


@source_reader("csv")
def _read_csv(src: SourceParams) -> Iterator[Row | Rejected]:
    path = Path(src.path)
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    delimiter = "\t" if name.endswith(".tsv") else ","
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        cols = set(reader.fieldnames or [])
        need = {src.text_column} | ({src.label_column} if src.role == "labeled" and src.label_column else set())
        if not cols:
            return
        if need - cols:
            raise UserError(
                f"{path}: column(s) {sorted(need - cols)} not found (columns: {sorted(cols)}); "
                f"set text_column/label_column of source {src.name!r} in params.yaml"
            )
        for i, rec in enumerate(reader, start=1):
            if None in rec:  # more fields than the header: a malformed line
                yield Rejected(str(path), i, "malformed CSV line: more fields than the header", str(rec.get(src.text_column, "")))
                continue
            text = rec.get(src.text_column)
            if text is None:
                yield Rejected(str(path), i, "malformed CSV line: fewer fields than the header")
                continue
            label = rec.get(src.label_column) if src.role == "labeled" and src.label_column else None
            yield Row(text, str(path), i, label=label)


@source_reader("jsonl")
def _read_jsonl(src: SourceParams) -> Iterator[Row | Rejected]:
    path = Path(src.path)
    with _open_text(path) as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                yield Rejected(str(path), i, "empty line")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Rejected(str(path), i, f"invalid JSON: {exc.msg}", line[:200])
                continue
            fields = src.text_columns or [src.text_column]
            if not isinstance(rec, dict) or not any(isinstance(rec.get(f), str) for f in fields):
                yield Rejected(str(path), i, f"no string field among {fields}", line[:200])
                continue
            text = "\n\n".join(rec[f] for f in fields if isinstance(rec.get(f), str) and rec[f].strip())
            label = rec.get(src.label_column) if src.role == "labeled" and src.label_column else None
            yield Row(text, str(path), i, label=_label(label))


@source_reader("parquet")
def _read_parquet(src: SourceParams) -> Iterator[Row | Rejected]:
    import pandas as pd

    path = Path(src.path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
    need = {src.text_column} | ({src.label_column} if src.role == "labeled" and src.label_column else set())
    if need - set(frame.columns):
        raise UserError(f"{path}: column(s) {sorted(need - set(frame.columns))} not found (columns: {sorted(frame.columns)}); "
                        f"set text_column/label_column of source {src.name!r} in params.yaml")
    for i, rec in enumerate(frame.to_dict("records"), start=1):
        text = rec.get(src.text_column)
        if not isinstance(text, str):
            yield Rejected(str(path), i, f"{src.text_column!r} is not a string ({type(text).__name__})")
            continue
        label = rec.get(src.label_column) if src.role == "labeled" and src.label_column else None
        yield Row(text, str(path), i, label=_label(label))


@source_reader("text_lines")
def _read_text_lines(src: SourceParams) -> Iterator[Row | Rejected]:
    path = Path(src.path)
    with _open_text(path) as fh:
        for i, line in enumerate(fh, start=1):
            yield Row(line.rstrip("\r\n"), str(path), i)


@source_reader("hf")
def _read_hf(src: SourceParams) -> Iterator[Row | Rejected]:
    """A Hugging Face datasets id (needs a reachable hub, or the dataset in the local HF cache)."""
    try:
        import datasets

        ds = datasets.load_dataset(src.path, split=src.split)
    except Exception as exc:  # noqa: BLE001 - offline/hub errors come in many types
        from lmops.errors import TransientError

        raise TransientError(f"source {src.name!r}: cannot load Hugging Face dataset {src.path!r} split {src.split!r} ({exc}); "
                             "with HF_HUB_OFFLINE=1 only cached datasets load") from exc
    for i, rec in enumerate(ds, start=1):
        text = rec.get(src.text_column)
        if not isinstance(text, str):
            yield Rejected(src.path, i, f"{src.text_column!r} is not a string")
            continue
        label = rec.get(src.label_column) if src.role == "labeled" and src.label_column else None
        yield Row(text, src.path, i, label=_label(label))


@source_reader("text_dir")
def _read_text_dir(src: SourceParams, date_from_name: bool = False) -> Iterator[Row | Rejected]:
    root = Path(src.path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".txt", ".gz"})
    if not files:
        raise UserError(f"{root}: no .txt files found for source {src.name!r}")
    for i, path in enumerate(files, start=1):
        with _open_text(path) as fh:
            text = fh.read()
        date = None
        if date_from_name:
            m = _FOMC_DATE.search(path.name)
            date = m.group(1) if m else None
        yield Row(text, str(path), i, date=date)


def to_iob2(tags: list[str]) -> list[str]:
    """IO or IOB1 tags → IOB2: an I-X that does not continue an X entity starts one (B-X)."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or out[-1][2:] != tag[2:] or out[-1] == "O"):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


@source_reader("conll")
def _read_conll(src: SourceParams) -> Iterator[Row | Rejected]:
    """CoNLL: one ``token [columns…] tag`` line per word, a blank line between sentences; ``-DOCSTART-`` skipped.

    Row numbers count sentences (1-based); a sentence with a bad line is quarantined whole, naming the line.
    """
    path = Path(src.path)
    words: list[str] = []
    tags: list[str] = []
    bad: str | None = None
    sentence = 0

    def flush():
        nonlocal words, tags, bad, sentence
        if words or bad:
            sentence += 1
            if bad:
                item: Row | Rejected = Rejected(str(path), sentence, bad, " ".join(words)[:200])
            else:
                item = Row(" ".join(words), str(path), sentence, label=" ".join(tags), tags=to_iob2(tags), words=words)
            words, tags, bad = [], [], None
            return item
        return None

    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                item = flush()
                if item is not None:
                    yield item
                continue
            if len(cols) < 2:
                bad = bad or f"line {lineno}: expected 'token ... tag' columns, got {line.strip()[:40]!r}"
                continue
            tag = cols[-1]
            if not (tag == "O" or re.fullmatch(r"[BI]-\S+", tag)):
                bad = bad or f"line {lineno}: tag {tag!r} is not O, B-TYPE or I-TYPE"
            words.append(cols[0])
            tags.append(tag)
    item = flush()
    if item is not None:
        yield item


@source_reader("fomc")
def _read_fomc(src: SourceParams) -> Iterator[Row | Rejected]:
    """A folder of FOMC statements; the meeting date comes from each file's name."""
    return _read_text_dir(src, date_from_name=True)


def read_source(src: SourceParams) -> Iterator[Row | Rejected]:
    path = Path(src.path)
    if src.format != "hf" and not path.exists():
        raise UserError(f"source {src.name!r}: {path} does not exist; fix ingest.sources[].path in params.yaml")
    yield from READERS[src.format](src)


class NearDuplicates:
    """MinHash over word 5-grams with LSH banding: flags a document whose estimated Jaccard similarity
    to an earlier one (same role) reaches ``threshold``. 64 hashes = 16 bands × 4 rows."""

    PERMS, BANDS = 64, 16

    def __init__(self, threshold: float, seed: int = 1):
        import numpy as np

        self.threshold = threshold
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, (1 << 61) - 1, self.PERMS, dtype=np.uint64)
        self._b = rng.integers(0, (1 << 61) - 1, self.PERMS, dtype=np.uint64)
        self._buckets: dict[tuple, list[int]] = {}
        self._sigs: list = []
        self._words: dict[str, int] = {}

    # odd multipliers that mix five word hashes into one 5-gram hash (mod 2^64)
    _MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)

    def _word_ids(self, words: list[str]):
        import numpy as np

        cache = self._words
        out = np.empty(len(words), dtype=np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:  # a stable hash (Python's hash() is salted per process): same data, same decisions
                h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            out[i] = h
        return out

    def signature(self, text: str):
        import numpy as np

        ids = self._word_ids(text.lower().split())
        n = max(1, len(ids) - 4)
        grams = np.zeros(n, dtype=np.uint64)
        # each shingle's hash combines its 5 word hashes, vectorised over the document (uint64 wraps)
        for k, mix in enumerate(self._MIX[: min(5, len(ids))]):
            grams += ids[k : k + n] * np.uint64(mix)
        grams = np.unique(grams)
        # (a*h + b) mod 2^64 as a universal-ish hash family; the min over shingles per permutation.
        return (np.outer(grams, self._a) + self._b).min(axis=0)

    def seen_before(self, role: str, text: str) -> bool:
        import numpy as np

        if len(text.split()) < 8:  # too short for shingles to mean anything; exact dedup covers these
            return False
        sig = self.signature(text)
        rows = self.PERMS // self.BANDS
        keys = [(role, b, sig[b * rows : (b + 1) * rows].tobytes()) for b in range(self.BANDS)]
        candidates = {i for k in keys for i in self._buckets.get(k, [])}
        if any(float(np.mean(self._sigs[i] == sig)) >= self.threshold for i in candidates):
            return True
        idx = len(self._sigs)
        self._sigs.append(sig)
        for k in keys:
            self._buckets.setdefault(k, []).append(idx)
        return False


def _key(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


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
            key = (src.role, _key(doc))
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
    fixed = frame[frame["source"].isin(pinned)]
    free = frame[~frame["source"].isin(pinned)]
    # Rows of one headline (entity task) share a group, so no headline is in two splits.
    groups = kind.split_groups(free)
    splits = _split(free, 0.0 if "validation" in pinned.values() else params.validation_fraction,
                    0.0 if "test" in pinned.values() else params.test_fraction, seed, groups)
    for name in splits:
        extra = fixed[fixed["source"].map(pinned) == name]
        if len(extra):
            splits[name] = pd.concat([splits[name], extra], ignore_index=True).sort_values("id").reset_index(drop=True)
    for name, part in splits.items():
        if part.empty:
            raise DataError(f"the {name} split is empty: add labeled rows, or assign a source to it (ingest.sources[].assign_split)")

    # Leakage guard: no evaluation text may appear in what the model pretrains on.
    eval_keys = {_key(t) for name in ("validation", "test") for t in splits[name]["text"]}
    corpus_rows = []
    for rec in corpus:
        if _key(rec["text"]) in eval_keys:
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
