"""Validation of a corpus too large for one GX batch: its pieces in this process vs on a Dask LocalCluster.

The corpus is a generated one (benchmarks/make_corpus.py) ingested once before any clock; then the corpus suite
runs over its Parquet file `--rows` rows at a time (`validate.corpus_batch_rows`), each side timed `--repeat`
times, alternating, the median kept. The cluster starts before the clock (a long-lived cluster serves many runs;
its start-up is reported). Both sides must give the same outcomes.

Run: .venv/bin/python benchmarks/make_corpus.py --mb 1000 --out /tmp/gen1g
     .venv/bin/python benchmarks/validate_scale.py --data /tmp/gen1g --workers 2 [--rows 100000] [--repeat 3]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import great_expectations  # noqa: F401 - imported before the clock (seconds of fixed cost)
    import pyarrow.parquet as pq

    from lmops.config import EngineParams, IngestParams, SourceParams, ValidateParams
    from lmops.tasks import engine as engines
    from lmops.tasks.ingest import ingest_corpus_only
    from lmops.tasks.validate import RowGroups, validate_frames

    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="lmops-validate-bench-"))
    src = SourceParams(name="gen", role="unlabeled", format="jsonl", path=str(data / "corpus.jsonl"))
    t0 = time.perf_counter()
    ingest_corpus_only(IngestParams(sources=[src], engine=EngineParams(kind="dask", workers=args.workers)), work)
    ingest_s = time.perf_counter() - t0
    path = work / "corpus.parquet"
    meta = pq.ParquetFile(path).metadata
    pieces = RowGroups(path, args.rows)
    p = ValidateParams(min_corpus_rows=1, corpus_batch_rows=args.rows)

    t0 = time.perf_counter()
    cluster = engines.DaskEngine(EngineParams(kind="dask", workers=args.workers))
    start_s = time.perf_counter() - t0
    engines.ENGINES["bench"] = lambda params: engines.Borrowed(cluster)

    def timed(engine):
        t0 = time.perf_counter()
        report = validate_frames({"corpus": pieces}, p, engine=engine)
        return time.perf_counter() - t0, [(o.expectation, o.success, o.observed) for o in report.outcomes]

    local, remote = [], []
    for _ in range(args.repeat):
        local.append(timed(None))
        remote.append(timed(EngineParams.model_construct(kind="bench")))
    cluster.close()
    n_pieces = len(pieces.pieces())
    shutil.rmtree(work, ignore_errors=True)
    here, there = statistics.median(t for t, _ in local), statistics.median(t for t, _ in remote)
    mb = (data / "corpus.jsonl").stat().st_size / 1e6
    result = {
        "command": f"python benchmarks/validate_scale.py --data {args.data} --workers {args.workers} --rows {args.rows} --repeat {args.repeat}",
        "input_mb": round(mb, 1), "corpus_rows": meta.num_rows, "row_groups": meta.num_row_groups, "pieces": n_pieces,
        "ingest_s_untimed": round(ingest_s, 1),
        "in_process": {"seconds": round(here, 2), "all_seconds": [round(t, 2) for t, _ in local]},
        "dask": {"workers": args.workers, "cluster_start_s": round(start_s, 2), "seconds": round(there, 2),
                 "all_seconds": [round(t, 2) for t, _ in remote]},
        "speedup": round(here / there, 2),
        "same_outcomes": all(o == local[0][1] for _, o in local + remote),
        "success": all(s for _, s, _ in local[0][1]),
        "failed": [f"{e}: {o}" for e, s, o in local[0][1] if not s],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate_scale.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
