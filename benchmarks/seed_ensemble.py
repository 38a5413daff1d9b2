"""Runs of one recipe that differ only in their seed, combined two ways, each scored against every member with lmops'
paired bootstrap: an ensemble (their calibrated probabilities averaged, as `lmops distill` teaches it; the monitor
would pay for every member) and a uniform soup (Wortsman et al., 2022: every weight averaged into one model of the
base's size, no training). The members must share one split (`ingest.split_seed`): on a member's own test split the
others would be scored on rows they trained on (the script refuses, through each model's `seen_texts.npy`).

Run: .venv/bin/python benchmarks/seed_ensemble.py --model M1 --model M2 --model M3 [--names 42,7,3] --set test=TEST.parquet \
       --set tweets=EVAL.parquet [--out benchmarks/results/seed_ensemble_minilm.json]
A set is a Parquet of ingested rows (a snapshot's split, or the data/eval.parquet `lmops compare --data FILE` writes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--set", action="append", required=True, help="NAME=PATH.parquet")
    ap.add_argument("--names", help="the members' names in the results, comma-separated (default: seed 1, seed 2, ...)")
    ap.add_argument("--labels", default="negative,neutral,positive")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/seed_ensemble_minilm.json")
    args = ap.parse_args()
    import pandas as pd
    import torch

    from lmops.kinds import KINDS
    from lmops.metrics import bootstrap_diff, macro_f1
    from lmops.tasks import seen
    from lmops.tasks.calibration import Identity
    from lmops.tasks.predict import load_classifier, predict_logits

    labels, kind = args.labels.split(","), KINDS["sequence"]
    frames = {name: pd.read_parquet(path) for name, path in (s.split("=", 1) for s in args.set)}
    for name, frame in frames.items():
        for m in args.model:
            mask = seen.seen_rows(m, frame["text"])
            if mask is not None and mask.any():
                raise SystemExit(f"{m} was trained or validated on {int(mask.sum())} rows of set {name}: train the members with one ingest.split_seed")
    truth = {name: list(kind.targets(f, labels)) for name, f in frames.items()}
    names = [f"seed {n}" for n in (args.names.split(",") if args.names else range(1, len(args.model) + 1))]
    probs: dict = {}
    results: dict = {"command": "python benchmarks/seed_ensemble.py " + " ".join(sys.argv[1:]), "models": dict(zip(names, args.model)), "sets": {n: len(f) for n, f in frames.items()}, "macro_f1": {}, "seconds": {}}
    states = []
    for name, path in zip(names, args.model):
        model, tok = load_classifier(path, labels, kind)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        t0 = time.perf_counter()
        for s, frame in frames.items():
            probs[name, s] = torch.softmax(predict_logits(model, tok, kind.inputs(frame), kind, labels, args.max_length, 64), -1)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(name, "scored", flush=True)
    # the soup: every tensor the uniform mean of the members' (integer buffers, e.g. position ids, from the first)
    soup = {k: (sum(st[k].double() for st in states) / len(states)).to(v.dtype) if v.is_floating_point() else v for k, v in states[0].items()}
    model, tok = load_classifier(args.model[0], labels, kind)
    model.load_state_dict(soup)
    model.lmops_calibrator = Identity()  # the first member's calibrator is not the soup's (and no calibrator moves an arg-max)
    for s, frame in frames.items():
        probs["soup", s] = torch.softmax(predict_logits(model, tok, kind.inputs(frame), kind, labels, args.max_length, 64), -1)
    for s in frames:
        probs["ensemble", s] = sum(probs[n, s] for n in names) / len(names)
    preds = {key: p.argmax(-1).tolist() for key, p in probs.items()}
    for who in [*names, "ensemble", "soup"]:
        results["macro_f1"][who] = {s: round(macro_f1(truth[s], preds[who, s], len(labels)), 4) for s in frames}
    results["member_mean"] = {s: round(sum(results["macro_f1"][n][s] for n in names) / len(names), 4) for s in frames}
    # B − A, paired over the same rows: each combination against each member, and the members against each other
    # (how far a seed alone moves the score on these rows: the yardstick for the rest)
    # (and the soup against the ensemble: does one averaged model keep what the several bought?)
    pairs = [(n, who) for who in ("ensemble", "soup") for n in names] + [("ensemble", "soup")] + list(itertools.combinations(names, 2))
    results["differences"] = {f"{b} - {a}": {s: bootstrap_diff(truth[s], preds[a, s], preds[b, s], labels)["macro_f1"] for s in frames}
                              for a, b in pairs}
    print(json.dumps({k: results[k] for k in ("macro_f1", "member_mean")}, indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
