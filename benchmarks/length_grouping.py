"""Fine-tuning step time with `finetune.group_by_length` off (the epoch order as the source sampler draws it) and on
(the same order, sorted by length in word pieces within windows of 50 batches, the batches shuffled), on one training split.

Both arms train the same model with the product's own pieces (initial model, the task kind's encoding and loss,
AdamW, clipping), alternating: STEPS optimizer steps of one, then of the other, ROUNDS times, so drift on the
machine falls on both. Also counts, over one whole epoch, the token positions each order pads its batches to.

Run: .venv/bin/python benchmarks/length_grouping.py INGEST_DIR/train.parquet PARAMS... [--steps 60] [--rounds 3] [--out JSON]
(PARAMS: the --params layers of the run, e.g. configs/minilm.yaml configs/all-sources.yaml)
"""
import argparse, json, platform, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lmops.config import load_params
from lmops.models import resolve_model_ref
from lmops.kinds.base import Reading, TaskKind
from lmops.tasks.finetune import SourceSampler, initial_model, length_grouped
from lmops.tasks.pooling import set_pooling

ap = argparse.ArgumentParser()
ap.add_argument("train")
ap.add_argument("params", nargs="+")
ap.add_argument("--steps", type=int, default=60)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--out")
a = ap.parse_args()

p = load_params(layers=a.params)
ft, labels = p.finetune, p.validate_.labels
kind = ft.kind
train = pd.read_parquet(a.train)
texts, y = kind.inputs(train), kind.targets(train, labels)
model, tok = initial_model(resolve_model_ref(ft.base_model), labels, kind, p.project.seed, ft.init_seed)
if kind.pools:
    set_pooling(model, ft.pooling)
reading = Reading.of(model)
rng = np.random.default_rng(p.project.seed)
sampler = SourceSampler(train["source"].to_numpy(), ft.sampling.alpha, ft.sampling.weights, rng)
lengths = np.array(kind.lengths(tok, texts, ft.max_length, reading))  # what finetune groups by
capped = np.array(TaskKind.lengths(kind, tok, texts, ft.max_length, reading))  # what a batch is padded to: word pieces
plain = sampler.epoch()
grouped = length_grouped(plain.copy(), lengths, ft.batch_size, rng)


def padded(order):
    return int(sum(capped[order[i:i + ft.batch_size]].max() * len(order[i:i + ft.batch_size]) for i in range(0, len(order), ft.batch_size)))


loss_fn = torch.nn.CrossEntropyLoss()
opt = torch.optim.AdamW(model.parameters(), lr=ft.lr)
model.train()
cursor = {"off": 0, "on": 0}


def run(name, order):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        i = cursor[name]
        idx = order[i:i + ft.batch_size]
        cursor[name] = (i + ft.batch_size) % (len(order) - ft.batch_size)
        enc = kind.encode(tok, [texts[j] for j in idx], ft.max_length, reading)
        loss = kind.batch_loss(loss_fn, model(**enc).logits, enc, [y[j] for j in idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return a.steps / (time.perf_counter() - t0)


rates = {"off": [], "on": []}
run("off", plain)  # warm-up, not counted
for r in range(a.rounds):
    for name, order in (("off", plain), ("on", grouped)):
        rates[name].append(run(name, order))
        print(f"round {r + 1} group_by_length {name}: {rates[name][-1]:.2f} steps/s", flush=True)
out = {
    "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "rows": len(texts),
    "batch_size": ft.batch_size, "max_length": ft.max_length, "steps_per_round": a.steps, "rounds": a.rounds,
    "real_tokens_per_epoch": int(capped.sum()),
    "padded_tokens_per_epoch": {"off": padded(plain), "on": padded(grouped)},
    "steps_per_s": {k: [round(v, 3) for v in vs] for k, vs in rates.items()},
    "median_steps_per_s": {k: round(float(np.median(vs)), 3) for k, vs in rates.items()},
}
out["ratio_on_over_off"] = round(out["median_steps_per_s"]["on"] / out["median_steps_per_s"]["off"], 2)
out["padding_ratio_off_over_on"] = round(out["padded_tokens_per_epoch"]["off"] / out["padded_tokens_per_epoch"]["on"], 2)
print(json.dumps(out, indent=1))
if a.out:
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
