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
from typing import Callable

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





@dataclass
class _Data:
    """Memory-mapped token blocks (the corpus need not fit in RAM), split once into held-out and training."""

    blocks: object
    block_size: int
    padded: bool  # line-by-line blocks: attention masks, padding ignored in the loss
    eval_blocks: object
    train_index: object


@dataclass
class _Engine:
    """What trains: the model (sharded under FSDP), the module the steps call (sparse head, DDP, compiled),
    the optimizer, precision and attention settings, and this process's place among the ranks."""

    model: object
    train_model: object
    sparse: bool
    opt: object
    scaler: object
    autocast: object
    attention: object
    precision: str
    tokenizer: object
    continuation: object
    device: object
    rank: int
    world: int
    fsdp: bool
    flops_per_token: float
    peak: float | None
    gen: object = None  # masking RNG (saved with checkpoints)

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Progress:
    """Where training stands; everything here is saved with each checkpoint. Data order lives in
    (rng, epoch_order, cursor), masking in gen, dropout in torch's global RNG."""

    rng: object
    gen: object
    epoch_order: object
    step: int = 0
    tokens: int = 0
    cursor: int = 0
    elapsed_before: float = 0.0
    running: object = 0.0
    history: list = field(default_factory=list)
    resumed_from: int | None = None

    def state(self, elapsed: float) -> dict:
        import torch

        return {"step": self.step, "tokens": self.tokens, "cursor": self.cursor, "elapsed": elapsed, "running": float(self.running),
                "epoch_order": self.epoch_order.tolist(), "rng": self.rng.bit_generator.state, "torch_gen": self.gen.get_state().tolist(),
                "torch_rng": torch.get_rng_state().tolist(), "history": self.history}


def pretrain(blocks_path: Path, tokenizer_dir: Path, params: PretrainParams, seed: int, out_dir: Path, progress: bool = True,
             checkpoint_dir: Path | None = None, on_checkpoint: Callable[[Path], None] | None = None) -> PretrainSummary:
    """Train; checkpoints go to ``checkpoint_dir`` (default ``out_dir/checkpoints``), and the newest one there
    is resumed from, so pointing a re-run at the same folder continues a killed run."""
    import numpy as np
    import torch

    from lmops.models import load_tokenizer

    rank, world, device = dist_setup()
    if params.batch_size % world:
        raise UserError(f"pretrain.batch_size ({params.batch_size}) must be divisible by the number of processes ({world})")
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    rng = np.random.default_rng(seed)
    data = _load_blocks(blocks_path, params, rng)
    engine = _build(params, tokenizer, data.block_size, device, rank, world, seed, token_counts=lambda v: _token_counts(data, v))
    ckpt_dir = checkpoint_dir or out_dir / "checkpoints"
    prog = _resume(ckpt_dir, engine, _Progress(rng=rng, gen=engine.gen, epoch_order=rng.permutation(len(data.train_index))))
    _wrap_for_training(engine, params, data.block_size)
    meter = _Meter(params, prog, engine, progress)
    with sigterm_flag() as signalled:
        while prog.step < params.max_steps:
            loss = _train_step(engine, prog, data, params)
            meter.stepped(prog)
            log_step = prog.step % params.log_every == 0 or prog.step == params.max_steps
            if log_step:
                meter.log(prog, engine, loss, params)
            if params.eval_every and prog.step % params.eval_every == 0 and prog.step < params.max_steps:
                with meter.paused():
                    prog.history[-1]["eval_loss"] = round(_held_out_loss(engine, data, params, seed), 4)
            stop = stop_request(params, meter.elapsed(prog), signalled, world, device, log_step=log_step)
            periodic = params.checkpoint_every and prog.step % params.checkpoint_every == 0 and prog.step < params.max_steps
            if periodic or (stop == STOP_SIGNAL and params.checkpoint_every):
                with meter.paused():
                    saved_dir = _checkpoint(ckpt_dir, engine, prog, params, meter.elapsed(prog))
                    if on_checkpoint and engine.main:
                        on_checkpoint(saved_dir)
            if stop == STOP_SIGNAL:
                meter.close(out_dir, write_profile=False)
                saved = f"saved checkpoint step {prog.step} in {ckpt_dir}; re-run the same command to resume" if params.checkpoint_every else \
                    "pretrain.checkpoint_every is 0, so nothing was saved"
                raise Preempted(f"pretraining stopped by SIGTERM at step {prog.step} of {params.max_steps}: {saved}")
            if stop == STOP_BUDGET:
                break
    meter.close(out_dir)
    return _finish(engine, prog, data, meter, params, seed, out_dir)


def _token_counts(data: _Data, vocab_size: int):
    """Token counts per id over the training blocks (not the held-out ones), read a slice at a time."""
    import numpy as np

    counts = np.zeros(vocab_size, dtype=np.int64)
    index = np.sort(data.train_index)
    for s in range(0, len(index), 4096):
        ids = np.asarray(data.blocks[index[s : s + 4096]]).ravel()
        counts += np.bincount(ids[ids < vocab_size], minlength=vocab_size)
    return counts


def _load_blocks(blocks_path: Path, params: PretrainParams, rng) -> _Data:
    import numpy as np

    blocks = np.load(blocks_path, mmap_mode="r")
    meta = Path(blocks_path).parent / "tokenize.json"
    padded = meta.exists() and json.loads(meta.read_text()).get("packing") is False
    order = rng.permutation(len(blocks))
    n_eval = max(1, int(len(blocks) * params.eval_fraction))
    data = _Data(blocks=blocks, block_size=blocks.shape[1], padded=padded, eval_blocks=np.asarray(blocks[order[:n_eval]]),
                 train_index=order[n_eval:])
    if len(data.train_index) < params.batch_size:
        raise UserError(f"only {len(data.train_index)} training blocks for pretrain.batch_size {params.batch_size}; lower it or add data")
    return data


def _build(params: PretrainParams, tokenizer, block_size: int, device, rank: int, world: int, seed: int, token_counts=None) -> _Engine:
    """The model (sharded under FSDP before the optimizer sees it), AdamW without decay on norms and biases,
    precision and the masking generator."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers under autocast (loss, norms)
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(params, tokenizer, block_size, token_counts).to(device)
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    fsdp = world > 1 and params.distributed == "fsdp"
    if fsdp:
        shard_model(model, device, world)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=params.lr,
                            fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(seed)
    continuation = continuation_table(tokenizer) if params.objective == "mlm" and params.whole_word_masking else None
    precision = precision_of(params, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    engine = _Engine(
        model=model, train_model=model, sparse=False, opt=opt, scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        autocast=(lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext,
        attention=sdpa_context(params.sdpa_backend), precision=precision, tokenizer=tokenizer, continuation=continuation, device=device,
        rank=rank, world=world, fsdp=fsdp, flops_per_token=0.0, peak=device_peak_flops(params, device), gen=gen,
    )
    return engine


def _resume(ckpt_dir: Path, engine: _Engine, prog: _Progress) -> _Progress:
    """Continue from the newest complete checkpoint in ``ckpt_dir``, if there is one."""
    import numpy as np
    import torch

    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return prog
    st = load_checkpoint(last, engine.model, engine.opt, sharded=engine.fsdp)
    prog.step, prog.tokens, prog.cursor, prog.elapsed_before, prog.running = st["step"], st["tokens"], st["cursor"], st["elapsed"], st["running"]
    prog.epoch_order = np.asarray(st["epoch_order"])
    prog.rng.bit_generator.state = st["rng"]
    prog.gen.set_state(torch.tensor(st["torch_gen"], dtype=torch.uint8))
    torch.set_rng_state(torch.tensor(st["torch_rng"], dtype=torch.uint8))  # dropout masks continue as they would have
    prog.history = st["history"]
    prog.resumed_from = prog.step
    return prog


def _wrap_for_training(engine: _Engine, params: PretrainParams, block_size: int) -> None:
    """The module the steps call: the sparse MLM head, then DDP, then torch.compile; and the FLOPs per token
    of what it computes (the head on masked positions only, with the sparse head)."""
    import torch

    # FSDP gathers root parameters (embeddings, tied head) in the model's own forward: no sparse head there
    sparse = sparse_mlm(engine.model) if params.objective == "mlm" and params.sparse_mlm_head and not engine.fsdp else None
    train_model = sparse if sparse is not None else engine.model
    if engine.world > 1 and not engine.fsdp:
        device = engine.device
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if params.compile:
        train_model = torch.compile(train_model, mode=None if params.compile_mode == "default" else params.compile_mode)
    engine.train_model, engine.sparse = train_model, sparse is not None
    engine.flops_per_token = flops_per_token(engine.model, block_size, params.mlm_probability if sparse is not None else 1.0)


def _train_step(engine: _Engine, prog: _Progress, data: _Data, params: PretrainParams):
    """One optimizer step over ``grad_accum`` micro-batches; returns the step's mean loss (on the device)."""
    import numpy as np
    import torch

    for group in engine.opt.param_groups:
        group["lr"] = lr_at(prog.step, params)
    per_rank = params.batch_size // engine.world
    loss_sum = torch.zeros((), device=engine.device)
    for micro in range(params.grad_accum):
        if prog.cursor + params.batch_size > len(prog.epoch_order):
            prog.cursor, prog.epoch_order = 0, prog.rng.permutation(len(data.train_index))
        idx = np.sort(prog.epoch_order[prog.cursor : prog.cursor + params.batch_size])
        prog.cursor += params.batch_size
        # Every rank builds the same global batch and masks, then trains on its own rows.
        batch = lm_batch(data.blocks[data.train_index[idx]], engine.tokenizer, params.objective, params.mlm_probability, engine.gen,
                         engine.continuation, data.padded)
        n_global = predicted_tokens(batch["labels"], params.objective)
        batch = {k: v[engine.rank * per_rank : (engine.rank + 1) * per_rank] for k, v in batch.items()}
        # A rank's loss is the mean over its own predicted tokens, and DDP averages the ranks' gradients:
        # weighting each rank by its share of the global batch's tokens makes that average the gradient of
        # the global mean, as one process computes it (masked counts differ between ranks). 1.0 alone.
        share = predicted_tokens(batch["labels"], params.objective) * engine.world / max(n_global, 1)
        if engine.sparse:
            batch["mlm_positions"], batch["mlm_targets"] = sparse_targets(batch.pop("labels"))
        batch = {k: to_device(v, engine.device) for k, v in batch.items()}
        if engine.sparse and params.compile:
            # the masked count changes every step: one dynamic-shape graph instead of a recompile per count
            torch._dynamo.maybe_mark_dynamic(batch["mlm_positions"], 0)
            torch._dynamo.maybe_mark_dynamic(batch["mlm_targets"], 0)
        last = micro == params.grad_accum - 1
        sync = contextlib.nullcontext() if engine.world == 1 or engine.fsdp or last else engine.train_model.no_sync()
        with sync, engine.attention(), engine.autocast():
            try:
                loss = engine.train_model(**batch).loss * share / params.grad_accum
            except RuntimeError as e:
                if "No available kernel" in str(e) or "No viable backend" in str(e):
                    raise UserError(f"pretrain.sdpa_backend {params.sdpa_backend} has no kernel on {engine.device} for this model "
                                    f"(dtype, head size or mask); use sdpa_backend: auto") from e
                raise
        engine.scaler.scale(loss).backward()
        loss_sum += loss.detach()  # stays on the device: no host sync per step, the CPU queues ahead
        prog.tokens += params.batch_size * data.block_size
    engine.scaler.unscale_(engine.opt)
    torch.nn.utils.clip_grad_norm_(engine.model.parameters(), 1.0)
    engine.scaler.step(engine.opt)
    engine.scaler.update()
    engine.opt.zero_grad(set_to_none=True)
    if engine.world > 1:
        torch.distributed.all_reduce(loss_sum)
        loss_sum = loss_sum / engine.world
    prog.running = loss_sum if prog.step == 0 else 0.9 * prog.running + 0.1 * loss_sum
    prog.step += 1
    return loss_sum


def _held_out_loss(engine: _Engine, data: _Data, params: PretrainParams, seed: int) -> float:
    # every rank evaluates all held-out blocks in batches of the global size: the masks one process would draw
    return evaluate_lm(engine.model, data.eval_blocks, engine.tokenizer, params.objective, params.mlm_probability, params.batch_size, seed,
                       engine.device, None if engine.autocast is contextlib.nullcontext else engine.autocast, data.padded)


def _checkpoint(ckpt_dir: Path, engine: _Engine, prog: _Progress, params: PretrainParams, elapsed: float) -> Path:
    import torch

    state = prog.state(elapsed)
    final = ckpt_dir / f"step-{prog.step:08d}"
    if engine.fsdp:
        final = save_sharded_checkpoint(ckpt_dir, prog.step, engine.model, engine.opt, state, params.keep_checkpoints, engine.rank)  # collective
    elif engine.main:
        final = save_checkpoint(ckpt_dir, prog.step, engine.model, engine.opt, state, params.keep_checkpoints)
    if engine.world > 1:
        torch.distributed.barrier()
    return final


class _Meter:
    """Progress bar, per-log-step rates and MFU, the steady-state rate and the profiler. Time spent in
    evaluations and checkpoints (``paused``) is left out of every training rate."""

    def __init__(self, params: PretrainParams, prog: _Progress, engine: _Engine, progress: bool):
        from tqdm.auto import tqdm

        device = self.device = engine.device
        self.start = time.perf_counter()
        # Steady-state rate: from the step after warm-up steps (compilation, allocator, cuDNN autotuning).
        self.skip = min(10, max(1, (params.max_steps - prog.step) // 5))
        self.steady_from: tuple[float, int, float] | None = None
        # profiled steps come right after the warm-up ones and are left out of the steady-state rate
        self.profiler = _profiler(params.profile_steps, self.skip, device) if engine.main else None
        self.steady_step = (prog.resumed_from or 0) + self.skip + (params.profile_steps + 1 if self.profiler is not None else 0)
        self.bar = tqdm(total=params.max_steps, initial=prog.step, desc=f"pretrain ({params.objective})", disable=not (progress and engine.main),
                        unit="step", mininterval=2.0)
        self.paused_s = 0.0
        self.last_log = (time.perf_counter(), prog.tokens, 0.0)
        self.end_train: float | None = None

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def elapsed(self, prog: _Progress) -> float:
        return prog.elapsed_before + time.perf_counter() - self.start

    def stepped(self, prog: _Progress) -> None:
        if self.steady_from is None and prog.step == self.steady_step:
            device_sync(self.device)
            self.steady_from = (time.perf_counter(), prog.tokens, self.paused_s)
        self.bar.update(1)
        if self.profiler is not None:
            self.profiler.step()

    def log(self, prog: _Progress, engine: _Engine, loss, params: PretrainParams) -> None:
        loss_now = float(loss)  # the one host sync: the device has caught up, so the interval's time is real
        now = time.perf_counter()
        # this log interval's rate, not the run average
        rate = (prog.tokens - self.last_log[1]) / max(now - self.last_log[0] - (self.paused_s - self.last_log[2]), 1e-9)
        self.last_log = (now, prog.tokens, self.paused_s)
        entry = {"step": prog.step, "loss": round(loss_now, 4), "lr": engine.opt.param_groups[0]["lr"], "tokens_per_s": round(rate, 1)}
        if engine.peak:
            entry["mfu"] = round(engine.flops_per_token * rate / (engine.peak * engine.world), 4)
        prog.history.append(entry)
        self.bar.set_postfix(loss=f"{loss_now:.3f}", tok_s=f"{rate:,.0f}", **({"mfu": f"{entry['mfu']:.1%}"} if engine.peak else {}))

    def close(self, out_dir: Path, write_profile: bool = True) -> None:
        self.bar.close()
        if write_profile:
            device_sync(self.device)
            self.end_train = time.perf_counter()
        if self.profiler is not None:
            if write_profile:
                _write_profile(self.profiler, out_dir, self.device)
            else:
                self.profiler.stop()

    def steady_rate(self, prog: _Progress) -> float | None:
        if self.steady_from is None or prog.tokens <= self.steady_from[1]:
            return None
        return (prog.tokens - self.steady_from[1]) / max(self.end_train - self.steady_from[0] - (self.paused_s - self.steady_from[2]), 1e-9)


def _finish(engine: _Engine, prog: _Progress, data: _Data, meter: _Meter, params: PretrainParams, seed: int, out_dir: Path) -> PretrainSummary:
    """Held-out loss, rates and MFU, the final weights (gathered under FSDP) saved as a plain HF folder."""
    import torch

    from lmops.tasks.plots import loss_curve

    running = float(prog.running)
    elapsed = prog.elapsed_before + meter.end_train - meter.start
    eval_loss = _held_out_loss(engine, data, params, seed)
    tokens_per_s = prog.tokens / max(elapsed, 1e-9)
    steady = meter.steady_rate(prog)
    mfu = round(engine.flops_per_token * (steady or tokens_per_s) / (engine.peak * engine.world), 4) if engine.peak else None
    model_dir = out_dir / "model"
    gathered = full_model_state(engine.model) if engine.fsdp else None  # collective; full only on rank 0
    digest = state_digest(engine.model, gathered) if engine.main or not engine.fsdp else None
    if engine.fsdp:  # the one full copy is rank 0's: every rank reports its digest
        box = [digest]
        torch.distributed.broadcast_object_list(box, src=0)
        digest = box[0]
    summary = PretrainSummary(
        model_dir=str(model_dir), objective=params.objective, steps=prog.step, tokens=prog.tokens, tokens_per_s=round(tokens_per_s, 1),
        train_loss=round(running, 4), eval_loss=round(eval_loss, 4), perplexity=round(math.exp(min(eval_loss, 50)), 3),
        parameters=sum(p.numel() for p in engine.model.parameters()), resumed_from_step=prog.resumed_from, world_size=engine.world,
        device=str(engine.device), precision=engine.precision, mfu=mfu, steady_tokens_per_s=round(steady, 1) if steady else None,
        flops_per_token=engine.flops_per_token, history=prog.history, param_digest=digest,
    )
    if engine.main:
        tmp_dir = out_dir / ".model.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        plain = engine.model
        if engine.fsdp:  # an unsharded copy holding the gathered weights, saved like any HF model
            plain = build_model(params, engine.tokenizer, data.block_size)
            plain.load_state_dict({k: v.cpu() for k, v in gathered.items()})
        plain.save_pretrained(tmp_dir, safe_serialization=True)
        engine.tokenizer.save_pretrained(tmp_dir)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp_dir, model_dir)
        pts = [(h["step"], h["loss"]) for h in prog.history]
        held_out = [(h["step"], h["eval_loss"]) for h in prog.history if "eval_loss" in h] + [(prog.step, eval_loss)]
        summary.loss_plot = str(loss_curve({"train": pts, "held-out": held_out}, out_dir / "loss.png", f"{params.objective.upper()} pretraining loss"))
        (out_dir / "history.json").write_text(json.dumps(prog.history))
        (out_dir / "pretrain.json").write_text(json.dumps(asdict(summary), indent=2))
        _model_card(model_dir, params, summary, data.block_size)
    if engine.world > 1:
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
