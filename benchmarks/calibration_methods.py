"""Calibration methods compared on one fine-tuned classifier: each fitted on the validation split as fine-tuning
fits it (``tasks/calibration.py``), then scored on the test split — ECE with its 95% bootstrap interval, ECE per
source, NLL and Brier score (proper scores, so a lower ECE is not an artefact of the binning). Predictions are
the same under every method (no calibrator changes an arg-max); only confidences move.

Run: .venv/bin/python benchmarks/calibration_methods.py --model RUN/finetune/model --data RUN/ingest
     [--fit-sources sentfin]   (fit on these sources' validation rows only: a model scored on a source it never saw)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a fine-tuned sequence classifier folder")
    ap.add_argument("--data", required=True, help="a folder with validation.parquet and test.parquet (a run's ingest/)")
    ap.add_argument("--fit-sources", default="", help="comma-separated sources whose validation rows fit the calibrators (default: all)")
    ap.add_argument("--methods", default="none,temperature,isotonic")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/calibration_methods.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import numpy as np
    import pandas as pd
    import torch

    from lmops.kinds import KINDS
    from lmops.metrics import bootstrap_ece, calibration as ece_metric
    from lmops.tasks import calibration
    from lmops.tasks.predict import load_classifier, predict_logits, saved_labels

    torch.set_num_threads(2)
    kind = KINDS["sequence"]
    labels = saved_labels(args.model)
    model, tok = load_classifier(args.model, labels, kind)
    model.lmops_calibrator = None  # raw logits: each method is fitted on them below
    frames = {s: pd.read_parquet(Path(args.data) / f"{s}.parquet") for s in ("validation", "test")}
    if args.fit_sources:
        v = frames["validation"]
        frames["validation"] = v[v["source"].isin(args.fit_sources.split(","))].reset_index(drop=True)
    raw = {s: predict_logits(model, tok, kind.inputs(f), kind, labels, args.max_length, 128).numpy().astype(np.float64) for s, f in frames.items()}
    y = {s: np.asarray(kind.targets(f, labels)) for s, f in frames.items()}
    sources = sorted(frames["test"]["source"].unique())
    results = {"model": args.model, "data": args.data, "fit_rows": len(y["validation"]), "fit_sources": args.fit_sources or "all",
               "test_rows": {s: int((frames["test"]["source"] == s).sum()) for s in sources}, "methods": {}}
    for method in args.methods.split(","):
        cal = calibration.Identity() if method == "none" else calibration.fit(method, raw["validation"], y["validation"].tolist())[0]
        p = torch.as_tensor(cal.apply(raw["test"])).softmax(-1)
        conf, right = p.max(-1).values.numpy(), (p.argmax(-1).numpy() == y["test"]).astype(int)
        row = {"ece": round(float(ece_metric(p, y["test"].tolist())["ece"]), 4), "ece_ci95": bootstrap_ece(conf, right),
               "nll": round(float(-np.log(np.maximum(p.numpy()[np.arange(len(p)), y["test"]], 1e-12)).mean()), 4),
               "brier": round(float(((p.numpy() - np.eye(len(labels))[y["test"]]) ** 2).sum(-1).mean()), 4),
               "accuracy": round(float(right.mean()), 4), "temperature": getattr(cal, "temperature", None), "by_source": {}}
        for s in sources:
            idx = np.flatnonzero(frames["test"]["source"].to_numpy() == s)
            row["by_source"][s] = {"ece": round(float(ece_metric(p[idx], y["test"][idx].tolist())["ece"]), 4),
                                   "ece_ci95": bootstrap_ece(conf[idx], right[idx])}
        results["methods"][method] = row
        by = " ".join(f"{s} {v['ece']:.4f} [{v['ece_ci95'][0]:.4f}, {v['ece_ci95'][1]:.4f}]" for s, v in row["by_source"].items())
        print(f"{method:12s} ECE {row['ece']:.4f} [{row['ece_ci95'][0]:.4f}, {row['ece_ci95'][1]:.4f}]  NLL {row['nll']:.4f}  "
              f"Brier {row['brier']:.4f}  acc {row['accuracy']:.4f}  | {by}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
