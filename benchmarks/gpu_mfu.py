"""GPU pretraining throughput and MFU of the lmops engine: BERT-base MLM (seq 128) and GPT-2-124M CLM (seq 1024), bf16.

Run (on a GPU machine): python benchmarks/gpu_mfu.py [--steps 60] [--variants base,compile]
CPU smoke test of the script itself: python benchmarks/gpu_mfu.py --tiny --steps 3

Random token blocks (throughput does not depend on content); the same `tasks.pretrain.pretrain` as the
pipeline, with SDPA attention, bf16 autocast and fused AdamW. Each model runs as a plain baseline (the
Hugging Face model as is: eager, MLM head over every position) and as the engine's fast settings
(sparse MLM head, torch.compile), in the same run; the ratio is reported.
MFU = model FLOPs/token actually computed × steady-state tokens/s ÷ device peak (dense bf16:
H100/H200 989 TFLOP/s, A100 312). Anchors: llm-foundry ~45% for 125M on A100; llm.c up to ~60%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lmops  # noqa: F401


def run(name: str, objective: str, size: dict, block: int, batch: int, steps: int, variant: str, tiny: bool) -> dict:
    import numpy as np

    from lmops.config import PretrainParams, TokenizeParams
    from tasks.pretrain import pretrain
    from tasks.tokenize import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix=f"mfu-{name}-"))
    kind = "wordpiece" if objective == "mlm" else "bpe"
    words = [f"tok{i}" for i in range(3000)]
    tok = train_tokenizer([" ".join(words[i:i + 50]) for i in range(0, 3000, 7)], TokenizeParams(kind=kind, vocab_size=4000))
    tok.save_pretrained(work / "tok")
    vocab = 30522 if objective == "mlm" else 50257
    if tiny:
        vocab = len(tok)
    blocks = np.random.default_rng(0).integers(5, min(vocab, len(tok)), size=(batch * (steps + 2) + 64, block), dtype=np.int32)
    np.save(work / "blocks.npy", blocks)
    # Vocab size of the real models matters for FLOPs: pad the tokenizer's vocab with unused ids.
    if not tiny and len(tok) < vocab:
        tok.add_tokens([f"<unused{i}>" for i in range(vocab - len(tok))])
        tok.save_pretrained(work / "tok")
    fast = variant == "fast"
    p = PretrainParams(objective=objective, max_steps=steps, batch_size=batch, warmup_steps=2, log_every=10, checkpoint_every=0,
                       eval_fraction=0.01, precision="auto", compile=fast and not tiny, sparse_mlm_head=fast,
                       pad_vocab_to_multiple=64 if fast else 1, **size)
    s = pretrain(work / "blocks.npy", work / "tok", p, 0, work / "out", progress=False)
    return {"name": name, "variant": variant, "tokens_per_s": s.tokens_per_s, "steady_tokens_per_s": s.steady_tokens_per_s,
            "mfu": s.mfu, "flops_per_token": s.flops_per_token, "device": s.device, "precision": s.precision,
            "parameters": s.parameters, "steps": s.steps, "batch": batch, "block": block, "loss": s.train_loss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--variants", default="base,fast", help="base = HF model as is, eager; fast = sparse MLM head + torch.compile")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, for checking the script on a CPU")
    ap.add_argument("--out", default="benchmarks/results/gpu_mfu.json")
    args = ap.parse_args()
    if args.tiny:
        bert = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
        gpt = bert
        cases = [("bert-tiny-mlm", "mlm", bert, 32, 4), ("gpt-tiny-clm", "clm", gpt, 64, 2)]
    else:
        bert = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
        gpt = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
        cases = [("bert-base-mlm-seq128", "mlm", bert, 128, 256), ("gpt2-124m-clm-seq1024", "clm", gpt, 1024, 32)]
    import torch

    results = []
    for n, o, s, blk, b in cases:
        for v in args.variants.split(","):
            try:
                r = run(n, o, s, blk, b, args.steps, v, args.tiny)
            except Exception as e:  # one failing variant should not cost the others' device time
                r = {"name": n, "variant": v, "error": f"{type(e).__name__}: {e}"[:2000]}
            print(json.dumps(r), flush=True)
            results.append(r)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        pair = [r for r in results if r["name"] == n]
        if len(pair) == 2 and all("error" not in r for r in pair):
            rate = lambda r: r["steady_tokens_per_s"] or r["tokens_per_s"]  # noqa: E731
            print(json.dumps({"name": n, "fast_over_base": round(rate(pair[1]) / rate(pair[0]), 3)}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
