"""Ingest + validate throughput on the 25 MB SEC 10-K corpus vs a plain pandas baseline, same run.

Run: .venv/bin/python benchmarks/ingest_throughput.py [--path ../shared/data/corpus_sec_10k/sec10k_items_text.jsonl] [--dask-workers 2]

lmops: read JSONL (4 text fields joined), NFC/whitespace/control-char normalization, chunking,
exact + MinHash near-duplicate detection, quarantine with reasons, Parquet out, and the Great
Expectations corpus suite. Baseline: `pandas.read_json(lines=True)` + `drop_duplicates` on the
same fields (no normalization, chunking, quarantine or validation). Ratio = lmops MB/s ÷ baseline MB/s.
Both run with their libraries imported (Great Expectations' import alone is seconds: a fixed cost, not throughput);
with ``--dask-workers N`` lmops also runs on a Dask LocalCluster of N processes (started before the clock).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import lmops  # noqa: F401

FIELDS = ["item1", "item1a", "item7", "item7a"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/corpus_sec_10k/sec10k_items_text.jsonl")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--dask-workers", type=int, default=0)
    args = ap.parse_args()
    import great_expectations  # noqa: F401 - imported before the clock, like pandas for the baseline
    import pandas as pd

    from lmops.config import EngineParams, IngestParams, SourceParams, ValidateParams
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

    def run(engine: EngineParams, work: Path):
        t0 = time.perf_counter()
        corpus, summary = ingest_corpus_only(IngestParams(sources=[src], chunk_chars=2000, engine=engine), work)
        report = validate_frames({"corpus": corpus}, ValidateParams(min_corpus_rows=1))
        return time.perf_counter() - t0, corpus, summary, report

    lmops_s, corpus, summary, report = run(EngineParams(), work / "local")
    c = summary.sources["sec10k"]
    result = {
        "command": f"python benchmarks/ingest_throughput.py --path {args.path}" + (f" --dask-workers {args.dask_workers}" if args.dask_workers else ""),
        "input_mb": round(mb, 2), "documents": c.rows_in, "kept": c.kept, "quarantined": c.quarantined, "duplicates": c.duplicates,
        "boilerplate_lines": c.boilerplate_lines, "chunks": len(corpus), "validation_success": report.success,
        "lmops": {"seconds": round(lmops_s, 2), "mb_per_s": round(mb / lmops_s, 2)},
        "baseline_pandas": {"seconds": round(base_s, 2), "mb_per_s": round(mb / base_s, 2), "rows": len(frame)},
        "ratio_mb_per_s": round(base_s / lmops_s, 3),
    }
    if args.dask_workers:
        from lmops.tasks import engine as engines

        # the cluster starts before the clock (a long-lived cluster serves many ingests); its start-up is reported
        t0 = time.perf_counter()
        cluster = engines.DaskEngine(EngineParams(kind="dask", workers=args.dask_workers))
        start_s = time.perf_counter() - t0
        engines.ENGINES["bench"] = lambda params: _Borrowed(cluster)
        dask_s, dcorpus, _, dreport = run(EngineParams.model_construct(kind="bench"), work / "dask")
        cluster.close()
        same = dcorpus.equals(corpus)
        result["lmops_dask"] = {"workers": args.dask_workers, "cluster_start_s": round(start_s, 2), "seconds": round(dask_s, 2),
                                "mb_per_s": round(mb / dask_s, 2), "ratio_mb_per_s": round(base_s / dask_s, 3), "same_corpus": same,
                                "validation_success": dreport.success}
    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


class _Borrowed:
    """An engine that is already running (closing it is the benchmark's business)."""

    def __init__(self, engine):
        self.engine, self.workers = engine, engine.workers

    def map(self, fn, args):
        return self.engine.map(fn, args)

    def close(self):
        pass


if __name__ == "__main__":
    main()
