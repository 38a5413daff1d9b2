"""Pretraining throughput: the lmops engine vs a plain Hugging Face Trainer baseline, same run.

Run: .venv/bin/python benchmarks/pretrain_throughput.py [--steps 40] [--out benchmarks/results]

Same model (BERT, 4 layers, 256 hidden), same data (the bundled finance sample), same batch size
and steps, same CPU threads. The baseline is what most tutorials do: HF `Trainer` with
`DataCollatorForLanguageModeling` on line-by-line examples padded to the maximum length. The
engine packs documents into full blocks, so every token it processes is real text. Reported:
raw tokens/s (pads included) and *useful* tokens/s (non-pad), and their ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lmops  # noqa: F401  (offline defaults)

MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from lmops.config import PretrainParams, TokenizeParams, load_params
    from lmops.tasks.ingest import ingest
    from lmops.tasks.pretrain import pretrain
    from lmops.models import load_tokenizer
    from lmops.tasks.tokenize import tokenize_corpus

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="lmops-bench-"))
    p = load_params()
    ingest(p.ingest, p.validate_.labels, work / "ingest", 0)
    tp = TokenizeParams(vocab_size=8000, block_size=args.block)
    tok = tokenize_corpus(work / "ingest" / "corpus.parquet", tp, "mlm", None, work / "tok")
    pp = PretrainParams(max_steps=args.steps, batch_size=args.batch, warmup_steps=2, log_every=10, checkpoint_every=0, eval_fraction=0.01, **MODEL)

    t0 = time.perf_counter()
    engine = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), pp, 0, work / "engine", progress=False)
    engine_s = time.perf_counter() - t0
    engine_tps = engine.tokens_per_s  # every token in a packed block is real text

    tokenizer = load_tokenizer(tok.tokenizer_dir)
    texts = pd.read_parquet(work / "ingest" / "corpus.parquet")["text"].tolist()
    enc = tokenizer(texts, truncation=True, max_length=args.block, padding="max_length")
    rows = [{"input_ids": ids, "attention_mask": am} for ids, am in zip(enc["input_ids"], enc["attention_mask"])]
    useful_share = float(np.mean([sum(r["attention_mask"]) for r in rows])) / args.block
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=MODEL["hidden_size"], num_hidden_layers=MODEL["num_layers"],
                     num_attention_heads=MODEL["num_heads"], intermediate_size=MODEL["intermediate_size"], pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(cfg)
    targs = TrainingArguments(output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                              learning_rate=1e-3, warmup_steps=2, logging_steps=10, save_strategy="no", report_to=[],
                              disable_tqdm=True, dataloader_num_workers=0, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    t0 = time.perf_counter()
    trainer.train()
    base_s = time.perf_counter() - t0
    base_raw = args.steps * args.batch * args.block / base_s
    base_useful = base_raw * useful_share

    result = {
        "command": "python benchmarks/pretrain_throughput.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "torch_threads": torch.get_num_threads(), "model": MODEL, "steps": args.steps, "batch": args.batch, "block": args.block,
        "engine": {"tokens_per_s": engine_tps, "seconds": round(engine_s, 1)},
        "baseline_trainer": {"raw_tokens_per_s": round(base_raw, 1), "useful_tokens_per_s": round(base_useful, 1),
                             "useful_share": round(useful_share, 3), "seconds": round(base_s, 1)},
        "ratio_useful_tokens_per_s": round(engine_tps / base_useful, 2),
        "ratio_raw_tokens_per_s": round(engine_tps / base_raw, 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
