"""GPU pretraining throughput and MFU of the lmops engine: BERT-base MLM (seq 128) and GPT-2-124M CLM (seq 1024), bf16.

Run (on a GPU machine): python benchmarks/gpu_mfu.py [--steps 80] [--variants base,fast,lean,lean-cudnn] [--budget-s 480]
CPU smoke test of the script itself: python benchmarks/gpu_mfu.py --tiny --steps 3 --variants base,lean

Random token blocks (throughput does not depend on content); the same `tasks.pretrain.pretrain` as the
pipeline, with SDPA attention, bf16 autocast and fused AdamW. Each model runs as a plain baseline (the
Hugging Face model as is: eager, MLM head over every position) and as the engine's faster settings, in the
same run; ratios are against `base`. Variants (params overrides, see VARIANTS):
  fast        sparse MLM head + torch.compile + vocab padded to 64 (the settings measured in session 2)
  lean        fast + dropout 0 (as nanoGPT/MPT pretrain)
  lean-cudnn  lean + cuDNN attention (Hopper's fastest SDPA kernel)
  lean-tuned  lean + compile_mode max-autotune-no-cudagraphs (minutes of kernel tuning at start-up)
  lean-2x     lean with twice the micro-batch
Each compiled variant profiles 5 steady steps (`pretrain.profile_steps`): the top kernels by GPU time go
to `<out dir>/profile-<model>-<variant>.txt`, so one device run also says where the time goes.
MFU = model FLOPs/token actually computed × steady-state tokens/s ÷ device peak (dense bf16:
H100/H200 989 TFLOP/s, A100 312); the script also measures a plain bf16 GEMM for the chip's real ceiling.
Anchors: llm-foundry ~45% for 125M on A100; llm.c up to ~60%. Results are written after every variant,
so a run cut short by --budget-s or a timeout keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import lmops  # noqa: F401

FAST = dict(sparse_mlm_head=True, compile=True, pad_vocab_to_multiple=64)
LEAN = {**FAST, "dropout": 0.0}
VARIANTS = {
    "base": dict(sparse_mlm_head=False, compile=False, pad_vocab_to_multiple=1),
    "fast": FAST,
    "lean": LEAN,
    "lean-cudnn": {**LEAN, "sdpa_backend": "cudnn"},
    "lean-tuned": {**LEAN, "compile_mode": "max-autotune-no-cudagraphs"},
    "lean-2x": {**LEAN, "batch_scale": 2},
}


def run(name: str, objective: str, size: dict, block: int, batch: int, steps: int, variant: str, tiny: bool, out: Path) -> dict:
    import numpy as np
    import torch

    from lmops.config import PretrainParams, TokenizeParams
    from lmops.tasks.pretrain import pretrain
    from lmops.tasks.tokenize import train_tokenizer

    torch._dynamo.reset()  # every variant compiles afresh, and never runs into the recompile limit
    work = Path(tempfile.mkdtemp(prefix=f"mfu-{name}-"))
    kind = "wordpiece" if objective == "mlm" else "bpe"
    words = [f"tok{i}" for i in range(3000)]
    tok = train_tokenizer([" ".join(words[i:i + 50]) for i in range(0, 3000, 7)], TokenizeParams(kind=kind, vocab_size=4000))
    tok.save_pretrained(work / "tok")
    vocab = 30522 if objective == "mlm" else 50257
    if tiny:
        vocab = len(tok)
    overrides = dict(VARIANTS[variant])
    batch *= overrides.pop("batch_scale", 1)
    if tiny:
        overrides["compile"] = False  # compiling on a CPU takes minutes; the smoke test checks the plumbing
        overrides.pop("compile_mode", None)
        overrides.pop("sdpa_backend", None)
    blocks = np.random.default_rng(0).integers(5, min(vocab, len(tok)), size=(batch * (steps + 2) + 64, block), dtype=np.int32)
    np.save(work / "blocks.npy", blocks)
    # Vocab size of the real models matters for FLOPs: pad the tokenizer's vocab with unused ids.
    if not tiny and len(tok) < vocab:
        tok.add_tokens([f"<unused{i}>" for i in range(vocab - len(tok))])
        tok.save_pretrained(work / "tok")
    profile = 5 if overrides.get("compile") and steps >= 30 else 0
    p = PretrainParams(objective=objective, max_steps=steps, batch_size=batch, warmup_steps=2, log_every=10, checkpoint_every=0,
                       eval_fraction=0.01, precision="auto", profile_steps=profile, **{**size, **overrides})
    t0 = time.perf_counter()
    s = pretrain(work / "blocks.npy", work / "tok", p, 0, work / "out", progress=False)
    if (work / "out" / "profile.txt").exists():
        shutil.copy(work / "out" / "profile.txt", out.parent / f"profile-{name}-{variant}.txt")
    shutil.rmtree(work, ignore_errors=True)
    return {"name": name, "variant": variant, "tokens_per_s": s.tokens_per_s, "steady_tokens_per_s": s.steady_tokens_per_s,
            "mfu": s.mfu, "flops_per_token": s.flops_per_token, "device": s.device, "precision": s.precision,
            "parameters": s.parameters, "steps": s.steps, "batch": batch, "block": block, "loss": s.train_loss,
            "wall_s": round(time.perf_counter() - t0, 1), "params": {k: v for k, v in overrides.items()}}


def gemm_ceiling() -> dict:
    """bf16 8192³ matmul TFLOP/s: what this chip actually does on the friendliest shape."""
    import torch

    if not torch.cuda.is_available():
        return {}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "gemm_bf16_tflops": round(20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--variants", default="base,fast,lean,lean-cudnn", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--models", default="bert,gpt", help="bert (BERT-base MLM seq 128) and/or gpt (GPT-2 124M CLM seq 1024)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new variant after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, for checking the script on a CPU")
    ap.add_argument("--out", default="benchmarks/results/gpu_mfu.json")
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.tiny:
        bert = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
        cases = {"bert": ("bert-tiny-mlm", "mlm", bert, 32, 4), "gpt": ("gpt-tiny-clm", "clm", bert, 64, 2)}
    else:
        base = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
        cases = {"bert": ("bert-base-mlm-seq128", "mlm", base, 128, 256), "gpt": ("gpt2-124m-clm-seq1024", "clm", base, 1024, 32)}
    import torch

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict] = [{"ceiling": gemm_ceiling()}]
    print(json.dumps(results[0]), flush=True)
    for key in args.models.split(","):
        n, o, s, blk, b = cases[key]
        for v in args.variants.split(","):
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                results.append({"name": n, "variant": v, "skipped": "over --budget-s"})
                continue
            try:
                r = run(n, o, s, blk, b, args.steps, v, args.tiny, out)
            except Exception as e:  # one failing variant should not cost the others' device time
                r = {"name": n, "variant": v, "error": f"{type(e).__name__}: {e}"[:2000]}
            base_run = next((x for x in results if x.get("name") == n and x.get("variant") == "base" and "error" not in x), None)
            if base_run and "error" not in r and "skipped" not in r and v != "base":
                rate = lambda x: x["steady_tokens_per_s"] or x["tokens_per_s"]  # noqa: E731
                r["over_base"] = round(rate(r) / rate(base_run), 3)
            print(json.dumps(r), flush=True)
            results.append(r)
            out.write_text(json.dumps(results, indent=2))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
