"""Runs of one recipe that differ only in their seed, combined two ways, each scored against every member with lmops'
paired bootstrap: an ensemble (their calibrated probabilities averaged, as `lmops distill` teaches it; the monitor
would pay for every member) and soups (Wortsman et al., 2022: weights averaged into one model of the base's size, no
training), made by `lmops soup`'s code (tasks/soup.py): uniform, and with --validation also greedy. The members must share one split (`ingest.split_seed`): on a member's own test split the
others would be scored on rows they trained on (the script refuses, through each model's `seen_texts.npy`).

Run: .venv/bin/python benchmarks/seed_ensemble.py --model M1 --model M2 --model M3 [--names 42,7,3] --set test=TEST.parquet \
       --set tweets=EVAL.parquet [--validation VAL.parquet] [--out benchmarks/results/seed_ensemble_minilm.json]
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
    ap.add_argument("--validation", help="the members' validation split: a greedy soup is chosen on it, and the soups are calibrated on it")
    ap.add_argument("--soup-dir", default="/tmp/lmops-seed-soups", help="where the soups' model folders are written")
    args = ap.parse_args()
    import pandas as pd
    import torch

    from lmops.kinds import KINDS
    from lmops.metrics import bootstrap_diff, macro_f1
    from lmops.tasks import seen
    from lmops.tasks.calibration import Identity
    from lmops.config import FinetuneParams
    from lmops.tasks.predict import load_classifier, predict_logits
    from lmops.tasks.soup import average, soup

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
    for name, path in zip(names, args.model):
        model, tok = load_classifier(path, labels, kind)
        t0 = time.perf_counter()
        for s, frame in frames.items():
            probs[name, s] = torch.softmax(predict_logits(model, tok, kind.inputs(frame), kind, labels, args.max_length, 64), -1)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(name, "scored", flush=True)
    soups = {"soup": "uniform", **({"greedy soup": "greedy"} if args.validation else {})}
    for who, method in soups.items():
        folder = Path(args.soup_dir) / method
        if args.validation:
            made = soup(args.model, Path(args.validation), labels, FinetuneParams(max_length=args.max_length), method, folder)
            results.setdefault("soups", {})[who] = {k: getattr(made, k) for k in ("used", "member_val", "val_select", "greedy", "start", "temperature")}
        else:  # no validation split to calibrate on: the average alone (tasks/soup.average), scored raw as before
            average([Path(m) for m in args.model], folder / "model")
        model, tok = load_classifier(str(folder / "model"), labels, kind)
        model.lmops_calibrator = Identity()  # scored raw like the members (no calibrator moves an arg-max)
        for s, frame in frames.items():
            probs[who, s] = torch.softmax(predict_logits(model, tok, kind.inputs(frame), kind, labels, args.max_length, 64), -1)
    for s in frames:
        probs["ensemble", s] = sum(probs[n, s] for n in names) / len(names)
    preds = {key: p.argmax(-1).tolist() for key, p in probs.items()}
    for who in [*names, "ensemble", *soups]:
        results["macro_f1"][who] = {s: round(macro_f1(truth[s], preds[who, s], len(labels)), 4) for s in frames}
    results["member_mean"] = {s: round(sum(results["macro_f1"][n][s] for n in names) / len(names), 4) for s in frames}
    # B − A, paired over the same rows: each combination against each member, and the members against each other
    # (how far a seed alone moves the score on these rows: the yardstick for the rest)
    # (and the soup against the ensemble: does one averaged model keep what the several bought?)
    pairs = [(n, who) for who in ("ensemble", *soups) for n in names] + [("ensemble", who) for who in soups] + list(itertools.combinations(names, 2))
    results["differences"] = {f"{b} - {a}": {s: bootstrap_diff(truth[s], preds[a, s], preds[b, s], labels)["macro_f1"] for s in frames}
                              for a, b in pairs}
    print(json.dumps({k: results[k] for k in ("macro_f1", "member_mean")}, indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
