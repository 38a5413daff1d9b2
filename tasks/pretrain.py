"""Pretrain: self-supervised masked-LM (BERT-style) or causal-LM (GPT-2-style) training: the loop.

Its parts live beside it: model setup (``lm_model``), masking, targets and the held-out loss (``lm``),
checkpoints (``checkpoints``) and the process group, sharding and agreed stops (``distributed``).

Starts from a config (sizes in params) or continues from any Hugging Face checkpoint (hub id, local
path or ``pkg:NAME``: domain-adaptive pretraining). Resumable: atomic checkpoints every
``checkpoint_every`` steps under ``out_dir/checkpoints``; re-running with the same ``out_dir`` continues
from the last one with the same data order. Distributed: under ``torchrun`` each rank trains on its
shard of every global batch with DDP (gloo on CPU, NCCL on GPU). Outputs ``model/`` (safetensors +
config + tokenizer), ``pretrain.json``, ``history.json``, ``loss.png`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmops.config import PretrainParams
from lmops.errors import TransientError, UserError
from lmops.tasks.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, save_sharded_checkpoint, state_digest
from lmops.tasks.distributed import (STOP_BUDGET, STOP_SIGNAL, device_sync, dist_setup, full_model_state, shard_model, sigterm_flag,
                                     stop_request, to_device)
from lmops.tasks.lm import continuation_table, evaluate_lm, lm_batch, predicted_tokens, sparse_mlm, sparse_targets
from lmops.tasks.lm_model import build_model, device_peak_flops, flops_per_token, precision_of, sdpa_context


class Preempted(TransientError):
    """SIGTERM during pretraining: the current step was checkpointed; re-running the same command resumes."""


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
    world_size: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    mfu: float | None = None  # from the steady-state rate when there is one
    steady_tokens_per_s: float | None = None  # after the first warm-up steps
    flops_per_token: float | None = None
    param_digest: str | None = None  # hash of this process's final weights (DDP replicas must agree)
    loss_plot: str | None = None
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, params: PretrainParams) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    return params.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))






def pretrain(blocks_path: Path, tokenizer_dir: Path, params: PretrainParams, seed: int, out_dir: Path, progress: bool = True,
             checkpoint_dir: Path | None = None) -> PretrainSummary:
    """Train; checkpoints go to ``checkpoint_dir`` (default ``out_dir/checkpoints``), and the newest one there
    is resumed from, so pointing a re-run at the same folder continues a killed run."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from lmops.tasks.plots import loss_curve
    from lmops.models import load_tokenizer

    rank, world, device = dist_setup()
    if params.batch_size % world:
        raise UserError(f"pretrain.batch_size ({params.batch_size}) must be divisible by the number of processes ({world})")
    main = rank == 0
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    # memory-mapped: batches are read from disk, so the corpus need not fit in RAM
    blocks = np.load(blocks_path, mmap_mode="r")
    block_size = blocks.shape[1]
    meta = Path(blocks_path).parent / "tokenize.json"
    padded = meta.exists() and json.loads(meta.read_text()).get("packing") is False
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(blocks))
    n_eval = max(1, int(len(blocks) * params.eval_fraction))
    eval_blocks, train_index = np.asarray(blocks[order[:n_eval]]), order[n_eval:]
    if len(train_index) < params.batch_size:
        raise UserError(f"only {len(train_index)} training blocks for pretrain.batch_size {params.batch_size}; lower it or add data")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers under autocast (loss, norms)
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(params, tokenizer, block_size).to(device)
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    fsdp = world > 1 and params.distributed == "fsdp"
    if fsdp:
        shard_model(model, device, world)  # before the optimizer: it must see the sharded parameters
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=params.lr,
                            fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(seed)
    continuation = continuation_table(tokenizer) if params.objective == "mlm" and params.whole_word_masking else None
    precision = precision_of(params, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # Data order lives in (rng, epoch_order, cursor) and masking in gen: all saved with each checkpoint.
    step, tokens, cursor, elapsed_before, running = 0, 0, 0, 0.0, 0.0
    epoch_order = rng.permutation(len(train_index))
    history: list[dict] = []
    ckpt_dir = checkpoint_dir or out_dir / "checkpoints"
    resumed_from = None
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        st = load_checkpoint(last, model, opt, sharded=fsdp)
        step, tokens, cursor, elapsed_before, running = st["step"], st["tokens"], st["cursor"], st["elapsed"], st["running"]
        epoch_order = np.asarray(st["epoch_order"])
        rng.bit_generator.state = st["rng"]
        gen.set_state(torch.tensor(st["torch_gen"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(st["torch_rng"], dtype=torch.uint8))  # dropout masks continue as they would have
        history = st["history"]
        resumed_from = step

    # FSDP gathers root parameters (embeddings, tied head) in the model's own forward: no sparse head there
    sparse = sparse_mlm(model) if params.objective == "mlm" and params.sparse_mlm_head and not fsdp else None
    train_model = sparse if sparse is not None else model
    if world > 1 and not fsdp:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if params.compile:
        train_model = torch.compile(train_model, mode=None if params.compile_mode == "default" else params.compile_mode)
    attention = sdpa_context(params.sdpa_backend)
    peak = device_peak_flops(params, device)
    head_fraction = params.mlm_probability if sparse is not None else 1.0
    fpt = flops_per_token(model, block_size, head_fraction)

    start = time.perf_counter()
    # Steady-state rate: from the step after warm-up steps (compilation, allocator, cuDNN autotuning).
    skip = min(10, max(1, (params.max_steps - step) // 5))
    steady_from: tuple[float, int, float] | None = None
    # profiled steps come right after the warm-up ones and are left out of the steady-state rate
    profiler = _profiler(params.profile_steps, skip, device) if main else None
    bar = tqdm(total=params.max_steps, initial=step, desc=f"pretrain ({params.objective})", disable=not (progress and main), unit="step", mininterval=2.0)
    per_rank = params.batch_size // world
    paused = 0.0  # seconds of evaluations and checkpoints: left out of the training rates
    last_log = (time.perf_counter(), tokens, paused)
    with sigterm_flag() as signalled:
        while step < params.max_steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, params)
            loss_sum = torch.zeros((), device=device)
            for micro in range(params.grad_accum):
                if cursor + params.batch_size > len(epoch_order):
                    cursor, epoch_order = 0, rng.permutation(len(train_index))
                idx = np.sort(epoch_order[cursor : cursor + params.batch_size])
                cursor += params.batch_size
                # Every rank builds the same global batch and masks, then trains on its own rows.
                batch = lm_batch(blocks[train_index[idx]], tokenizer, params.objective, params.mlm_probability, gen, continuation, padded)
                n_global = predicted_tokens(batch["labels"], params.objective)
                batch = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
                # A rank's loss is the mean over its own predicted tokens, and DDP averages the ranks' gradients:
                # weighting each rank by its share of the global batch's tokens makes that average the gradient of
                # the global mean, as one process computes it (masked counts differ between ranks). 1.0 alone.
                share = predicted_tokens(batch["labels"], params.objective) * world / max(n_global, 1)
                if sparse is not None:
                    batch["mlm_positions"], batch["mlm_targets"] = sparse_targets(batch.pop("labels"))
                batch = {k: to_device(v, device) for k, v in batch.items()}
                if sparse is not None and params.compile:
                    # the masked count changes every step: one dynamic-shape graph instead of a recompile per count
                    torch._dynamo.maybe_mark_dynamic(batch["mlm_positions"], 0)
                    torch._dynamo.maybe_mark_dynamic(batch["mlm_targets"], 0)
                sync = contextlib.nullcontext() if world == 1 or fsdp or micro == params.grad_accum - 1 else train_model.no_sync()
                with sync, attention(), (autocast() if autocast else contextlib.nullcontext()):
                    try:
                        loss = train_model(**batch).loss * share / params.grad_accum
                    except RuntimeError as e:
                        if "No available kernel" in str(e) or "No viable backend" in str(e):
                            raise UserError(f"pretrain.sdpa_backend {params.sdpa_backend} has no kernel on {device} for this model "
                                            f"(dtype, head size or mask); use sdpa_backend: auto") from e
                        raise
                scaler.scale(loss).backward()
                loss_sum += loss.detach()  # stays on the device: no host sync per step, the CPU queues ahead
                tokens += params.batch_size * block_size
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum = loss_sum / world
            running = loss_sum if step == 0 else 0.9 * running + 0.1 * loss_sum
            step += 1
            if steady_from is None and step == (resumed_from or 0) + skip + (params.profile_steps + 1 if profiler is not None else 0):
                device_sync(device)
                steady_from = (time.perf_counter(), tokens, paused)
            bar.update(1)
            if profiler is not None:
                profiler.step()
            elapsed = elapsed_before + time.perf_counter() - start
            if step % params.log_every == 0 or step == params.max_steps:
                loss_now = float(loss_sum)  # the one host sync: the device has caught up, so the interval's time is real
                now = time.perf_counter()
                # this log interval's rate, not the run average
                rate = (tokens - last_log[1]) / max(now - last_log[0] - (paused - last_log[2]), 1e-9)
                last_log = (now, tokens, paused)
                entry = {"step": step, "loss": round(loss_now, 4), "lr": opt.param_groups[0]["lr"], "tokens_per_s": round(rate, 1)}
                if peak:
                    entry["mfu"] = round(fpt * rate / (peak * world), 4)
                history.append(entry)
                bar.set_postfix(loss=f"{loss_now:.3f}", tok_s=f"{rate:,.0f}", **({"mfu": f"{entry['mfu']:.1%}"} if peak else {}))
            if params.eval_every and step % params.eval_every == 0 and step < params.max_steps:
                t = time.perf_counter()
                history[-1]["eval_loss"] = round(evaluate_lm(model, eval_blocks, tokenizer, params.objective, params.mlm_probability,
                                                             params.batch_size, seed, device, autocast, padded), 4)
                paused += time.perf_counter() - t
            stop = stop_request(params, elapsed, signalled, world, device, log_step=step % params.log_every == 0 or step == params.max_steps)
            periodic = params.checkpoint_every and step % params.checkpoint_every == 0 and step < params.max_steps
            if periodic or (stop == STOP_SIGNAL and params.checkpoint_every):
                t = time.perf_counter()
                state = {"step": step, "tokens": tokens, "cursor": cursor, "elapsed": elapsed, "running": float(running),
                         "epoch_order": epoch_order.tolist(), "rng": rng.bit_generator.state, "torch_gen": gen.get_state().tolist(),
                         "torch_rng": torch.get_rng_state().tolist(), "history": history}
                if fsdp:
                    save_sharded_checkpoint(ckpt_dir, step, model, opt, state, params.keep_checkpoints, rank)  # collective
                elif main:
                    save_checkpoint(ckpt_dir, step, model, opt, state, params.keep_checkpoints)
                if world > 1:
                    torch.distributed.barrier()
                paused += time.perf_counter() - t
            if stop == STOP_SIGNAL:
                bar.close()
                if profiler is not None:
                    profiler.stop()
                saved = f"saved checkpoint step {step} in {ckpt_dir}; re-run the same command to resume" if params.checkpoint_every else \
                    "pretrain.checkpoint_every is 0, so nothing was saved"
                raise Preempted(f"pretraining stopped by SIGTERM at step {step} of {params.max_steps}: {saved}")
            if stop == STOP_BUDGET:
                break
    bar.close()
    device_sync(device)
    if profiler is not None:
        _write_profile(profiler, out_dir, device)
    running = float(running)
    elapsed = elapsed_before + time.perf_counter() - start
    end_train = time.perf_counter()
    # every rank evaluates all held-out blocks in batches of the global size: the masks one process would draw
    eval_loss = evaluate_lm(model, eval_blocks, tokenizer, params.objective, params.mlm_probability, params.batch_size, seed, device, autocast,
                            padded)
    tokens_per_s = tokens / max(elapsed, 1e-9)
    steady = None
    if steady_from is not None and tokens > steady_from[1]:
        steady = (tokens - steady_from[1]) / max(end_train - steady_from[0] - (paused - steady_from[2]), 1e-9)
    mfu = round(fpt * (steady or tokens_per_s) / (peak * world), 4) if peak else None

    model_dir = out_dir / "model"
    gathered = full_model_state(model) if fsdp else None  # collective; full only on rank 0
    digest = state_digest(model, gathered) if main or not fsdp else None
    if fsdp:  # the one full copy is rank 0's: every rank reports its digest
        box = [digest]
        torch.distributed.broadcast_object_list(box, src=0)
        digest = box[0]
    summary = PretrainSummary(
        model_dir=str(model_dir), objective=params.objective, steps=step, tokens=tokens, tokens_per_s=round(tokens_per_s, 1),
        train_loss=round(running, 4), eval_loss=round(eval_loss, 4), perplexity=round(math.exp(min(eval_loss, 50)), 3),
        parameters=sum(p.numel() for p in model.parameters()), resumed_from_step=resumed_from, world_size=world,
        device=str(device), precision=precision, mfu=mfu, steady_tokens_per_s=round(steady, 1) if steady else None,
        flops_per_token=fpt, history=history, param_digest=digest,
    )
    if main:
        tmp_dir = out_dir / ".model.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        plain = model
        if fsdp:  # an unsharded copy holding the gathered weights, saved like any HF model
            plain = build_model(params, tokenizer, block_size)
            plain.load_state_dict({k: v.cpu() for k, v in gathered.items()})
        plain.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp_dir, model_dir)
        pts = [(h["step"], h["loss"]) for h in history]
        held_out = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h] + [(step, eval_loss)]
        summary.loss_plot = str(loss_curve({"train": pts, "held-out": held_out}, out_dir / "loss.png", f"{params.objective.upper()} pretraining loss"))
        (out_dir / "history.json").write_text(json.dumps(history))
        (out_dir / "pretrain.json").write_text(json.dumps(asdict(summary), indent=2))
        _model_card(model_dir, params, summary, block_size)
    if world > 1:
        torch.distributed.barrier()
    return summary


def _profiler(steps: int, skip: int, device):
    """torch.profiler over ``steps`` steps after the first ``skip`` (compilation, allocator warm-up)."""
    if not steps:
        return None
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities, schedule=schedule(wait=max(0, skip - 1), warmup=1, active=steps, repeat=1))
    prof.start()
    return prof


def _write_profile(prof, out_dir: Path, device) -> None:
    prof.stop()
    events = prof.key_averages()
    if not len(events):  # the run ended before the profiled steps
        return
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (out_dir / "profile.txt").write_text(events.table(sort_by=sort, row_limit=40))
    prof.export_chrome_trace(str(out_dir / "trace.json"))


def _model_card(model_dir: Path, params: PretrainParams, s: PretrainSummary, block_size: int) -> None:
    import sys

    (model_dir / "README.md").write_text(
        f"# Domain-pretrained {params.objective.upper()} model (lmops)\n\n"
        f"- base: {params.base_model or 'from config'} · parameters {s.parameters:,} · block size {block_size}\n"
        f"- steps {s.steps} · tokens seen {s.tokens:,} · held-out loss {s.eval_loss} · perplexity {s.perplexity}\n"
        f"- data version: see the run's lineage (`data.dvc`) · {s.world_size} process(es) on {s.device}, {s.precision}\n"
        f"- command: `{' '.join(['lmops', *sys.argv[1:]])}`\n"
    )
