"""Pretrain: self-supervised masked-LM (BERT-style) or causal-LM (GPT-2-style) training.

Starts from a config (sizes in params) or continues from any Hugging Face checkpoint (hub id or
local path: domain-adaptive pretraining). Outputs ``model/`` (safetensors + config + tokenizer),
``pretrain.json``, ``history.json`` and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmops.config import PretrainParams


@dataclass
class PretrainSummary:
    model_dir: str
    objective: str
    steps: int
    tokens: int
    tokens_per_s: float
    train_loss: float
    eval_loss: float
    perplexity: float
    parameters: int
    resumed_from_step: int | None = None
    loss_plot: str | None = None
    history: list[dict] = field(default_factory=list)


def build_model(params: PretrainParams, tokenizer, block_size: int):
    """A fresh model from the sizes in params, or a checkpoint to continue from."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    if params.base_model:
        auto = AutoModelForMaskedLM if params.objective == "mlm" else AutoModelForCausalLM
        from lmops.models import resolve_model_ref

        model = auto.from_pretrained(resolve_model_ref(params.base_model), use_safetensors=True, trust_remote_code=False)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    if params.objective == "mlm":
        cfg = BertConfig(
            vocab_size=len(tokenizer), hidden_size=params.hidden_size, num_hidden_layers=params.num_layers,
            num_attention_heads=params.num_heads, intermediate_size=params.intermediate_size,
            max_position_embeddings=max(512, block_size), pad_token_id=tokenizer.pad_token_id,
        )
        return BertForMaskedLM(cfg)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_embd=params.hidden_size, n_layer=params.num_layers, n_head=params.num_heads,
        n_inner=params.intermediate_size, n_positions=max(1024, block_size),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(cfg)


def mask_tokens(input_ids, tokenizer, probability: float, generator):
    """BERT masking: choose ``probability`` of non-special tokens; of those 80% [MASK], 10% random, 10% kept.

    Returns (inputs, labels) with labels = -100 where no prediction is asked for.
    """
    import torch

    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in set(tokenizer.all_special_ids):
        special |= input_ids == tid
    probs = torch.full(input_ids.shape, probability)
    probs.masked_fill_(special, 0.0)
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels[~chosen] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    inputs[to_random] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[to_random]
    return inputs, labels


def _batch(blocks, tokenizer, objective: str, mlm_probability: float, generator):
    import torch

    ids = torch.as_tensor(blocks, dtype=torch.long)
    if objective == "mlm":
        inputs, labels = mask_tokens(ids, tokenizer, mlm_probability, generator)
        return {"input_ids": inputs, "labels": labels}
    return {"input_ids": ids, "labels": ids.clone()}


def lr_at(step: int, params: PretrainParams) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    return params.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate_lm(model, blocks, tokenizer, objective: str, mlm_probability: float, batch_size: int, seed: int) -> float:
    """Mean held-out loss; MLM masks with a fixed seed so every evaluation sees the same masks."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = _batch(blocks[i : i + batch_size], tokenizer, objective, mlm_probability, gen)
            n = int((batch["labels"] != -100).sum())
            if n == 0:
                continue
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def pretrain(blocks_path: Path, tokenizer_dir: Path, params: PretrainParams, seed: int, out_dir: Path, progress: bool = True) -> PretrainSummary:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from tasks.plots import loss_curve
    from tasks.tokenize import load_tokenizer

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    blocks = np.load(blocks_path)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(blocks))
    n_eval = max(1, int(len(blocks) * params.eval_fraction))
    eval_blocks, train_blocks = blocks[order[:n_eval]], blocks[order[n_eval:]]
    model = build_model(params, tokenizer, blocks.shape[1])
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=params.lr)
    gen = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    train_pts, eval_pts = [], []
    tokens = 0
    start = time.perf_counter()
    cursor, epoch_order = 0, rng.permutation(len(train_blocks))
    running = 0.0
    step = 0
    bar = tqdm(total=params.max_steps, desc=f"pretrain ({params.objective})", disable=not progress, unit="step", mininterval=2.0)
    for step in range(params.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, params)
        loss_sum = 0.0
        for _ in range(params.grad_accum):
            if cursor + params.batch_size > len(epoch_order):
                cursor, epoch_order = 0, rng.permutation(len(train_blocks))
            idx = epoch_order[cursor : cursor + params.batch_size]
            cursor += params.batch_size
            batch = _batch(train_blocks[np.sort(idx)], tokenizer, params.objective, params.mlm_probability, gen)
            loss = model(**batch).loss / params.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
            tokens += int(batch["input_ids"].numel())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = loss_sum if step == 0 else 0.9 * running + 0.1 * loss_sum
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if (step + 1) % params.log_every == 0 or step + 1 == params.max_steps:
            elapsed = time.perf_counter() - start
            rec = {"step": step + 1, "loss": round(loss_sum, 4), "lr": opt.param_groups[0]["lr"], "tokens_per_s": round(tokens / elapsed, 1)}
            history.append(rec)
            train_pts.append((step + 1, loss_sum))
        if params.time_budget_s and time.perf_counter() - start > params.time_budget_s:
            break
    bar.close()
    steps_done = step + 1
    elapsed = time.perf_counter() - start
    eval_loss = evaluate_lm(model, eval_blocks, tokenizer, params.objective, params.mlm_probability, params.batch_size, seed)
    eval_pts.append((steps_done, eval_loss))

    model_dir = out_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    plot = loss_curve({"train": train_pts, "held-out": eval_pts}, out_dir / "loss.png", f"{params.objective.upper()} pretraining loss")
    summary = PretrainSummary(
        model_dir=str(model_dir), objective=params.objective, steps=steps_done, tokens=tokens,
        tokens_per_s=round(tokens / elapsed, 1), train_loss=round(running, 4), eval_loss=round(eval_loss, 4),
        perplexity=round(math.exp(min(eval_loss, 50)), 3), parameters=sum(p.numel() for p in model.parameters()),
        loss_plot=str(plot), history=history,
    )
    (out_dir / "pretrain.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
