"""Documents to score: CSV/TSV (optionally gzipped), JSONL and Parquet with a text and a timestamp column, read in
chunks so a large file keeps memory flat. The rules are ingest's: text normalized the same way, and every row either
yields a document or is quarantined with its reason (the caller counts duplicates)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from lmops.config import MonitorParams
from lmops.errors import UserError

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".gz": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class Doc:
    id: str
    text: str
    ts: float  # Unix seconds, UTC
    source: str
    file: str
    row: int


@dataclass
class Quarantined:
    file: str
    row: int
    reason: str
    text: str = ""


def files_of(path: Path) -> list[Path]:
    """A file, or the readable files of a folder (sorted; hidden and partial uploads left alone)."""
    if path.is_file():
        if _suffix(path) not in SUFFIXES:
            raise UserError(f"{path}: the monitor reads {', '.join(sorted(SUFFIXES))} files (CSV/TSV may be gzipped)")
        return [path]
    if path.is_dir():
        return sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".") and _suffix(f) in SUFFIXES)
    raise UserError(f"{path}: no such file or folder")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def parse_time(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 string (naive = UTC), a date, or a number of seconds; None if unparseable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        return parse_time(value.to_pydatetime())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def doc_id(source: str, ts: float, text: str) -> str:
    return hashlib.sha256(f"{source}\0{ts:.3f}\0{text}".encode()).hexdigest()[:24]


def _shape(rec: dict, file: Path, row: int, p: MonitorParams, now: float) -> Doc | Quarantined:
    from lmops.text import normalize_text

    raw = rec.get(p.text_column)
    if not isinstance(raw, str):
        return Quarantined(str(file), row, f"no text: {p.text_column!r} is {'missing' if raw is None else type(raw).__name__}")
    if "\ufffd" in raw:
        return Quarantined(str(file), row, "text is not valid UTF-8 (undecodable bytes); re-export the file as UTF-8", raw[:200])
    text = normalize_text(raw)
    if not text:
        return Quarantined(str(file), row, "empty text")
    if len(text) < p.min_chars:
        return Quarantined(str(file), row, f"text shorter than monitor.min_chars={p.min_chars}", text[:200])
    if len(text) > p.max_chars:
        return Quarantined(str(file), row, f"text longer than monitor.max_chars={p.max_chars} ({len(text)} chars)", text[:200])
    stamp = rec.get(p.time_column)
    if stamp is None or (isinstance(stamp, str) and not stamp.strip()):
        return Quarantined(str(file), row, f"missing timestamp ({p.time_column!r})", text[:200])
    ts = parse_time(stamp)
    if ts is None or not math.isfinite(ts):
        return Quarantined(str(file), row, f"unparseable timestamp {str(stamp)[:40]!r} ({p.time_column!r}: ISO 8601 or Unix seconds)", text[:200])
    if ts > now + p.future_tolerance_s:
        when = datetime.fromtimestamp(ts, timezone.utc).isoformat()
        return Quarantined(str(file), row, f"timestamp {when} is in the future (monitor.future_tolerance_s={p.future_tolerance_s:g})", text[:200])
    source = rec.get(p.source_column)
    source = str(source).strip() if source is not None and str(source).strip() else file.name
    given = rec.get(p.id_column)
    given = None if given is None or (isinstance(given, float) and math.isnan(given)) else str(given).strip()
    return Doc(id=given or doc_id(source, ts, text), text=text, ts=ts, source=source, file=str(file), row=row)


def _records(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(row, record, None) or (row, None, reason) per record of one file, streamed."""
    from lmops.tasks.readers import _csv_records, _open_text

    fmt = SUFFIXES[_suffix(path)]
    if fmt == "csv":
        delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        try:
            with _open_text(path) as fh:
                reader = csv.DictReader(fh, delimiter=delimiter)
                for i, rec, bad in _csv_records(reader, path):
                    if bad:
                        yield i, None, bad
                    elif None in rec:
                        yield i, None, "malformed CSV line: more fields than the header"
                    else:
                        yield i, rec, None
        except (OSError, EOFError) as exc:  # a .gz that is not gzip, a truncated archive
            raise UserError(f"{path}: cannot read ({exc}); is it really {'gzip' if path.suffix == '.gz' else 'text'}?") from exc
    elif fmt == "jsonl":
        with _open_text(path) as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    yield i, None, "empty line"
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, None, f"invalid JSON: {exc.msg}"
                    continue
                yield (i, rec, None) if isinstance(rec, dict) else (i, None, "a JSON line that is not an object")
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        i = 0
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                i += 1
                yield i, rec, None


def read_docs(path: Path, p: MonitorParams, now: float) -> Iterator[Doc | Quarantined]:
    """Every record of ``path`` as a document or a quarantined row, in file order."""
    for row, rec, bad in _records(path):
        if bad:
            yield Quarantined(str(path), row, bad)
        else:
            yield _shape(rec, path, row, p, now)


def check_columns(path: Path, p: MonitorParams) -> None:
    """A file without the text or timestamp column is a user error naming the columns, not a file of quarantined rows."""
    fmt = SUFFIXES[_suffix(path)]
    if fmt == "jsonl":
        return  # per-line objects: a missing field quarantines that line
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            cols = set(pq.read_schema(path).names)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
    else:
        from lmops.tasks.readers import _open_text

        delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        try:
            with _open_text(path) as fh:
                cols = set(next(csv.reader(fh, delimiter=delimiter), []))
        except (OSError, EOFError, csv.Error) as exc:
            raise UserError(f"{path}: cannot read the header ({exc})") from exc
        if not cols:
            return  # an empty file: nothing to score
    missing = sorted({p.text_column, p.time_column} - cols)
    if missing:
        raise UserError(f"{path}: column(s) {missing} not found (columns: {sorted(cols)}); set monitor.text_column / "
                        "monitor.time_column in params.yaml")
