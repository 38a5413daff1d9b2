"""Ingest + validate throughput on the 25 MB SEC 10-K corpus vs a plain pandas baseline, same run.

Run: .venv/bin/python benchmarks/ingest_throughput.py [--path ../shared/data/corpus_sec_10k/sec10k_items_text.jsonl] [--dask-workers 2] [--repeat 5] [--warmup 1]

lmops: read JSONL (4 text fields joined), NFC/whitespace/control-char normalization, chunking,
exact + MinHash near-duplicate detection, quarantine with reasons, Parquet out, and the Great
Expectations corpus suite. Baseline: `pandas.read_json(lines=True)` + `drop_duplicates` on the
same fields (no normalization, chunking, quarantine or validation). Ratio = lmops MB/s ÷ baseline MB/s.
Both run with their libraries imported (Great Expectations' import alone is seconds: a fixed cost, not throughput)
and after ``--warmup`` untimed rounds each;
with ``--dask-workers N`` lmops also runs on a Dask LocalCluster of N processes (started before the clock).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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
    # each side timed this often, alternating, and the median kept: on a shared 2-core VM one timing of the
    # baseline varied 2x between runs (0.41-0.85 s), which is what a single-shot ratio then reports
    ap.add_argument("--repeat", type=int, default=5)
    # untimed rounds of each side first: a process's first ingest pays one-time costs (lazy imports, the NFC bitmap,
    # the first allocations of its arenas) that are start-up, not throughput, like the libraries' imports
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    import great_expectations  # noqa: F401 - imported before the clock, like pandas for the baseline
    import pandas as pd

    from lmops.config import EngineParams, IngestParams, SourceParams, ValidateParams
    from lmops.tasks.ingest import ingest_corpus_only
    from lmops.tasks.validate import validate_frames

    path = Path(args.path)
    mb = path.stat().st_size / 1e6
    work = Path(tempfile.mkdtemp(prefix="lmops-ingest-bench-"))

    def baseline():
        t0 = time.perf_counter()
        frame = pd.read_json(path, lines=True)
        frame["text"] = frame[FIELDS].fillna("").agg("\n\n".join, axis=1)
        frame = frame.drop_duplicates(subset=["text"])
        return time.perf_counter() - t0, frame

    src = SourceParams(name="sec10k", role="unlabeled", format="jsonl", path=str(path), text_columns=FIELDS)

    def run(engine: EngineParams, work: Path):
        t0 = time.perf_counter()
        corpus, summary = ingest_corpus_only(IngestParams(sources=[src], chunk_chars=2000, engine=engine), work)
        report = validate_frames({"corpus": corpus}, ValidateParams(min_corpus_rows=1))
        return time.perf_counter() - t0, corpus, summary, report

    for i in range(args.warmup):
        baseline()
        run(EngineParams(), work / f"warm{i}")
    base_times, lmops_times = [], []
    for i in range(args.repeat):
        base_s, frame = baseline()
        base_times.append(base_s)
        lmops_s, corpus, summary, report = run(EngineParams(), work / f"local{i}")
        lmops_times.append(lmops_s)
    base_s, lmops_s = statistics.median(base_times), statistics.median(lmops_times)
    c = summary.sources["sec10k"]
    result = {
        "command": f"python benchmarks/ingest_throughput.py --path {args.path} --repeat {args.repeat} --warmup {args.warmup}"
                   + (f" --dask-workers {args.dask_workers}" if args.dask_workers else ""),
        "input_mb": round(mb, 2), "documents": c.rows_in, "kept": c.kept, "quarantined": c.quarantined, "duplicates": c.duplicates,
        "boilerplate_lines": c.boilerplate_lines, "chunks": len(corpus), "validation_success": report.success,
        "repeat": args.repeat, "warmup": args.warmup,
        "lmops": {"seconds": round(lmops_s, 2), "mb_per_s": round(mb / lmops_s, 2), "all_seconds": [round(t, 2) for t in lmops_times]},
        "baseline_pandas": {"seconds": round(base_s, 2), "mb_per_s": round(mb / base_s, 2), "rows": len(frame),
                            "all_seconds": [round(t, 2) for t in base_times]},
        "ratio_mb_per_s": round(base_s / lmops_s, 3),
        # fastest against fastest: on a VM reclaiming idle memory (kdamond), the allocation-heavy baseline varied
        # 4x between timings (0.45-2.0 s) and a median ratio moves with it
        "ratio_of_fastest": round(min(base_times) / min(lmops_times), 3),
    }
    if args.dask_workers:
        from lmops.tasks import engine as engines

        # the cluster starts before the clock (a long-lived cluster serves many ingests); its start-up is reported
        t0 = time.perf_counter()
        cluster = engines.DaskEngine(EngineParams(kind="dask", workers=args.dask_workers))
        start_s = time.perf_counter() - t0
        engines.ENGINES["bench"] = lambda params: engines.Borrowed(cluster)
        for i in range(args.warmup):  # (each worker's first batch imports the kernels and builds its bitmap)
            run(EngineParams.model_construct(kind="bench"), work / f"daskwarm{i}")
        dask_times = []
        for i in range(args.repeat):
            dask_s, dcorpus, _, dreport = run(EngineParams.model_construct(kind="bench"), work / f"dask{i}")
            dask_times.append(dask_s)
        dask_s = statistics.median(dask_times)
        cluster.close()
        same = dcorpus.equals(corpus)
        result["lmops_dask"] = {"workers": args.dask_workers, "cluster_start_s": round(start_s, 2), "seconds": round(dask_s, 2),
                                "all_seconds": [round(t, 2) for t in dask_times], "mb_per_s": round(mb / dask_s, 2), "ratio_mb_per_s": round(base_s / dask_s, 3),
                                "ratio_of_fastest": round(min(base_times) / min(dask_times), 3), "same_corpus": same,
                                "validation_success": dreport.success}
    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
