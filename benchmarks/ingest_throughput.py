"""Ingest + validate throughput on the 25 MB SEC 10-K corpus vs a plain pandas baseline, same run.

Run: .venv/bin/python benchmarks/ingest_throughput.py [--path ../shared/data/corpus_sec_10k/sec10k_items_text.jsonl]

lmops: read JSONL (4 text fields joined), NFC/whitespace/control-char normalization, chunking,
exact + MinHash near-duplicate detection, quarantine with reasons, Parquet out, and the Great
Expectations corpus suite. Baseline: `pandas.read_json(lines=True)` + `drop_duplicates` on the
same fields (no normalization, chunking, quarantine or validation). Ratio = lmops MB/s ÷ baseline MB/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lmops  # noqa: F401

FIELDS = ["item1", "item1a", "item7", "item7a"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/corpus_sec_10k/sec10k_items_text.jsonl")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import pandas as pd

    from lmops.config import IngestParams, SourceParams, ValidateParams
    from lmops.tasks.ingest import ingest_corpus_only
    from lmops.tasks.validate import validate_frames

    path = Path(args.path)
    mb = path.stat().st_size / 1e6
    work = Path(tempfile.mkdtemp(prefix="lmops-ingest-bench-"))

    t0 = time.perf_counter()
    frame = pd.read_json(path, lines=True)
    frame["text"] = frame[FIELDS].fillna("").agg("\n\n".join, axis=1)
    frame = frame.drop_duplicates(subset=["text"])
    base_s = time.perf_counter() - t0

    src = SourceParams(name="sec10k", role="unlabeled", format="jsonl", path=str(path), text_columns=FIELDS)
    t0 = time.perf_counter()
    corpus, summary = ingest_corpus_only(IngestParams(sources=[src], chunk_chars=2000), work)
    report = validate_frames({"corpus": corpus}, ValidateParams(min_corpus_rows=1))
    lmops_s = time.perf_counter() - t0
    c = summary.sources["sec10k"]
    result = {
        "command": f"python benchmarks/ingest_throughput.py --path {args.path}",
        "input_mb": round(mb, 2), "documents": c.rows_in, "kept": c.kept, "quarantined": c.quarantined, "duplicates": c.duplicates,
        "chunks": len(corpus), "validation_success": report.success,
        "lmops": {"seconds": round(lmops_s, 2), "mb_per_s": round(mb / lmops_s, 2)},
        "baseline_pandas": {"seconds": round(base_s, 2), "mb_per_s": round(mb / base_s, 2), "rows": len(frame)},
        "ratio_mb_per_s": round((mb / lmops_s) / (mb / base_s), 3),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
