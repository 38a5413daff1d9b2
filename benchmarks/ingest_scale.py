"""Ingest of a generated corpus (benchmarks/make_corpus.py) as a run does it (`ingest`: the corpus beside a small
labeled source, split, leakage-checked, written): wall time, peak RSS of the whole process tree (this process and
any Dask workers), near-duplicate recall and precision on the planted pairs.

Run: .venv/bin/python benchmarks/ingest_scale.py --data /tmp/corpus --workers 1 [--workers 2 ...] [--threads 1] [--json]

--workers 1 is this process (the local engine, its batches on ``--threads`` threads: 0, the default, one per core);
more workers are a Dask LocalCluster of that many processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import lmops  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    """The largest total RSS of this process and its descendants, sampled every 0.2 s."""

    def __init__(self):
        import psutil

        self.peak, self._stop = 0, threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(data: Path, workers: int, threads: int = 0) -> dict:
    import pandas as pd

    from lmops.config import EngineParams, IngestParams, SourceParams
    from lmops.tasks.ingest import ingest

    engine = EngineParams(threads=threads) if workers == 1 else EngineParams(kind="dask", workers=workers)
    labeled = SourceParams(name="sentfin", role="labeled", format="sentfin", path=str(ROOT / "tests/fixtures/sentfin_sample.csv"))
    params = IngestParams(sources=[labeled, SourceParams(name="gen", role="unlabeled", format="jsonl", path=str(data / "corpus.jsonl"))],
                          engine=engine)
    out = Path(tempfile.mkdtemp(prefix="lmops-scale-"))
    rss = PeakRSS()
    t0 = time.perf_counter()
    summary = ingest(params, ["negative", "neutral", "positive"], out, 0)
    seconds = time.perf_counter() - t0
    peak = rss.stop()
    ids = pd.read_parquet(out / "corpus.parquet", columns=["id"])["id"]
    kept = set(ids[ids.str.startswith("gen:")].str.split(":").str[1].astype(int))
    del ids
    c = summary.sources["gen"]
    q = pd.read_parquet(out / "quarantine.parquet")
    quarantined = set(q[q["source"] == "gen"]["row"])
    dropped = set(range(1, c.rows_in + 1)) - kept - quarantined
    planted = {copy for copy, _ in json.loads((data / "planted.json").read_text())}
    mb = (data / "corpus.jsonl").stat().st_size / 1e6
    shutil.rmtree(out, ignore_errors=True)
    local = {"threads": engine.threads or os.cpu_count()} if workers == 1 else {}
    return {"workers": workers, **local, "input_mb": round(mb, 1), "documents": c.rows_in, "seconds": round(seconds, 1),
            "mb_per_s": round(mb / seconds, 2), "peak_rss_mb": round(peak / 2**20), "duplicates": c.duplicates,
            "near_duplicates": {"found": c.near_duplicates, "planted": len(planted),
                                "recall": round(len(planted & dropped) / max(1, len(planted)), 4),
                                "precision": round(len(planted & dropped) / max(1, len(dropped)), 4)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--workers", type=int, action="append")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for w in args.workers or [1]:
        print(json.dumps(run(Path(args.data), w, args.threads)), flush=True)


if __name__ == "__main__":
    main()
