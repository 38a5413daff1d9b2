"""Pretrain: self-supervised masked-LM (BERT-style) or causal-LM (GPT-2-style) training.

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

# Dense bf16 peak FLOP/s per device, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


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


def set_dropout(config, rate: float | None):
    """Set every dropout rate of a Hugging Face config (BERT ``*_dropout_prob``, GPT-2 ``*_pdrop``, …)."""
    if rate is None:
        return config
    for key, value in config.to_dict().items():
        if isinstance(value, float) and (key.endswith("dropout") or key.endswith("dropout_prob") or key.endswith("pdrop")):
            setattr(config, key, rate)
    return config


def build_model(params: PretrainParams, tokenizer, block_size: int):
    """A fresh model from the sizes in params, or a checkpoint to continue from."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    if params.base_model:
        from lmops.models import resolve_model_ref

        ref = resolve_model_ref(params.base_model)
        auto = AutoModelForMaskedLM if params.objective == "mlm" else AutoModelForCausalLM
        cfg = set_dropout(AutoConfig.from_pretrained(ref, trust_remote_code=False), params.dropout)
        model = auto.from_pretrained(ref, config=cfg, use_safetensors=True, trust_remote_code=False,
                                     attn_implementation=params.attn_implementation)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return _named_loss(model, params.objective)
    m = params.pad_vocab_to_multiple
    vocab_size = -(-len(tokenizer) // m) * m
    if params.objective == "mlm":
        cfg = BertConfig(
            vocab_size=vocab_size, hidden_size=params.hidden_size, num_hidden_layers=params.num_layers,
            num_attention_heads=params.num_heads, intermediate_size=params.intermediate_size,
            max_position_embeddings=max(512, block_size), pad_token_id=tokenizer.pad_token_id,
        )
        set_dropout(cfg, params.dropout)
        cfg._attn_implementation = params.attn_implementation
        return BertForMaskedLM(cfg)
    cfg = GPT2Config(
        vocab_size=vocab_size, n_embd=params.hidden_size, n_layer=params.num_layers, n_head=params.num_heads,
        n_inner=params.intermediate_size, n_positions=max(1024, block_size),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    set_dropout(cfg, params.dropout)
    cfg._attn_implementation = params.attn_implementation
    return _named_loss(GPT2LMHeadModel(cfg), params.objective)


def _named_loss(model, objective: str):
    # Without a loss_type, HF logs "loss_type=None ... unrecognized" on every forward, which also breaks
    # the torch.compile graph in two before the loss.
    if objective == "clm" and getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def continuation_table(tokenizer):
    """Bool tensor over the vocab: True where a token continues the previous word.

    WordPiece marks continuations with ``##``; byte-level BPE (GPT-2/RoBERTa) and SentencePiece mark
    word *starts* (``Ġ`` / ``▁``), so there a token without the marker continues a word.
    """
    import torch

    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        rule = lambda t: t.startswith("##")  # noqa: E731
    else:
        marker = "Ġ" if any(t.startswith("Ġ") for t in tokens) else "▁"
        rule = lambda t: not t.startswith(marker)  # noqa: E731
    specials = set(tokenizer.all_special_tokens)
    for tok, idx in vocab.items():
        table[idx] = rule(tok) and tok not in specials
    return table


def mask_tokens(input_ids, tokenizer, probability: float, generator, continuation=None):
    """BERT masking: choose ``probability`` of non-special tokens (or of whole words when
    ``continuation`` is given); of those 80% [MASK], 10% random, 10% kept.

    Returns (inputs, labels) with labels = -100 where no prediction is asked for.
    """
    import torch

    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in set(tokenizer.all_special_ids):
        special |= input_ids == tid
    draw = torch.rand(input_ids.shape, generator=generator)
    if continuation is not None:
        # Every token takes the draw of the first token of its word, so a word is chosen as a whole.
        cont = continuation[input_ids.clamp(max=len(continuation) - 1)] & ~special
        pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        start_pos = torch.where(cont, torch.zeros_like(pos), pos).cummax(dim=1).values
        draw = draw.gather(1, start_pos)
    chosen = (draw < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    inputs[to_random] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[to_random]
    return inputs, labels


def _batch(blocks, tokenizer, objective: str, mlm_probability: float, generator, continuation=None, padded: bool = False):
    """Model inputs for a batch of blocks; ``padded`` (line-by-line blocks) adds an attention mask."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(blocks), dtype=torch.long)
    if objective == "mlm":
        inputs, labels = mask_tokens(ids, tokenizer, mlm_probability, generator, continuation)
        batch = {"input_ids": inputs, "labels": labels}
    else:
        batch = {"input_ids": ids, "labels": ids.clone()}
    if padded:
        pad = ids == tokenizer.pad_token_id
        batch["attention_mask"] = (~pad).long()
        batch["labels"][pad] = -100
    return batch


def lr_at(step: int, params: PretrainParams) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    return params.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _mlm_parts(model):
    """(encoder, vocabulary head) of a Hugging Face masked LM (BERT: .bert/.cls, RoBERTa: .roberta/.lm_head), or None."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    return (encoder, head) if encoder is not None and head is not None else None


def sparse_targets(labels, multiple: int = 64):
    """On the host: (flat positions of the labelled tokens, their labels), padded to a multiple of ``multiple``
    with position 0 / label -100. Computed where the masks are drawn, so the device never has to tell the
    host how many tokens are masked (a boolean index would: a sync and a torch.compile graph break per step)."""
    import torch

    flat = labels.reshape(-1)
    pos = (flat != -100).nonzero().squeeze(1)
    n = -(-max(len(pos), 1) // multiple) * multiple
    positions = torch.zeros(n, dtype=torch.long)
    targets = torch.full((n,), -100, dtype=torch.long)
    positions[: len(pos)] = pos
    targets[: len(pos)] = flat[pos]
    return positions, targets


def sparse_mlm(model):
    """Wrap a masked LM so the vocabulary head runs only on masked positions.

    The loss is the same as the model's own (mean cross-entropy over labelled positions); the head's
    matmul over the vocabulary (a fifth of BERT-base's FLOPs, plus a [tokens × vocab] fp32 tensor) is
    done for ~15% of the tokens. Inputs: ``input_ids`` and :func:`sparse_targets` of the labels.
    Returns None for architectures it does not know.
    """
    import torch

    if _mlm_parts(model) is None:
        return None

    class SparseMLM(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, mlm_positions, mlm_targets, attention_mask=None):
            encoder, head = _mlm_parts(self.inner)
            # packed blocks have no padding, so no mask (and SDPA keeps its fastest kernels)
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = head(hidden.flatten(0, 1).index_select(0, mlm_positions))
            # sum / count: padding rows (label -100) add nothing, and a batch without masks gives 0, not NaN
            loss = torch.nn.functional.cross_entropy(logits.float(), mlm_targets, ignore_index=-100, reduction="sum")
            return _Out(loss / (mlm_targets != -100).sum().clamp(min=1))

    return SparseMLM(model)


@dataclass
class _Out:
    loss: object


def flops_per_token(model, block_size: int, head_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6·N (forward+backward matmuls) + attention scores (PaLM appendix B).

    N counts every weight that takes part in a matmul: not the position/type embeddings (lookups), but
    the word embeddings, which are also the tied output layer. ``head_fraction`` is the share of tokens
    the vocabulary head runs on (0.15 with the sparse MLM head), so MFU counts only work that is done.
    """
    cfg = model.config
    lookup = ("position_embeddings", "token_type_embeddings", ".wpe.")
    named = dict(model.named_parameters())
    n = sum(p.numel() for name, p in named.items() if not any(k in name for k in lookup))
    out = model.get_output_embeddings()
    head_params = 0
    parts = _mlm_parts(model)
    if parts is not None:
        seen = {id(p) for p in parts[1].parameters()}
        head_params = sum(p.numel() for p in parts[1].parameters())
        if out is not None and id(out.weight) not in seen:
            head_params += out.weight.numel()
    elif out is not None:
        head_params = out.weight.numel()
    n -= (1.0 - head_fraction) * head_params
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return 6 * n + 12 * layers * hidden * block_size


def device_peak_flops(params: PretrainParams, device) -> float | None:
    if params.peak_flops:
        return params.peak_flops
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def evaluate_lm(model, blocks, tokenizer, objective: str, mlm_probability: float, batch_size: int, seed: int, device=None, autocast=None,
                padded: bool = False) -> float:
    """Mean held-out loss; MLM masks with a fixed seed so every evaluation sees the same masks."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = _batch(blocks[i : i + batch_size], tokenizer, objective, mlm_probability, gen, padded=padded)
            n = int((batch["labels"] != -100).sum())
            if n == 0:
                continue
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / max(count, 1)


# --- checkpoints ---------------------------------------------------------------------------

def resume_dir(blocks_cache_key: str, params: PretrainParams, seed: int) -> Path:
    """Where the pipeline keeps pretraining checkpoints: keyed by the tokenized data and the params, so
    re-running a killed flow with the same inputs resumes instead of starting over."""
    import hashlib

    from lmops.env import lmops_home

    key = hashlib.sha256(json.dumps([blocks_cache_key, params.model_dump(mode="json"), seed], sort_keys=True).encode()).hexdigest()[:16]
    return lmops_home() / "checkpoints" / f"pretrain-{key}"


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").exists()) if ckpt_dir.exists() else []
    return done[-1] if done else None


def _publish(tmp: Path, final: Path, ckpt_dir: Path, state: dict, keep: int) -> Path:
    """Mark ``tmp`` complete (state.json last, everything fsynced), rename it into place, prune old ones."""
    (tmp / "state.json").write_text(json.dumps(state))  # written last: its presence marks a complete checkpoint
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_checkpoint(ckpt_dir: Path, step: int, model, opt, state: dict, keep: int) -> Path:
    """Write to a temp folder, then rename: a kill at any point leaves either no checkpoint or a whole one."""
    import torch
    from safetensors.torch import save_model

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings/decoder weights
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    return _publish(tmp, ckpt_dir / f"step-{step:08d}", ckpt_dir, state, keep)


def save_sharded_checkpoint(ckpt_dir: Path, step: int, model, opt, state: dict, keep: int, rank: int) -> Path:
    """FSDP: every rank writes its own shards (torch.distributed.checkpoint), so no process ever holds the
    whole model or optimizer state; rank 0 then publishes the folder atomically. Collective: all ranks call it.
    ``ckpt_dir`` must be one folder all ranks see (a shared file system across nodes)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = ckpt_dir / f".tmp-step-{step:08d}-sharded"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "shards"))
    torch.distributed.barrier()  # every rank's files are written
    final = ckpt_dir / f"step-{step:08d}"
    if rank == 0:
        _publish(tmp, final, ckpt_dir, state, keep)
    torch.distributed.barrier()
    return final


def load_checkpoint(path: Path, model, opt, sharded: bool = False) -> dict:
    import torch
    from safetensors.torch import load_model

    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (path / "shards").exists():
            raise UserError(f"{path} was written without FSDP; resume it with pretrain.distributed: ddp")
        # each rank reads only its own shards into the sharded state dicts
        model_state, optim_state = get_state_dict(model, opt)
        both = {"model": model_state, "optim": optim_state}
        dcp.load(both, checkpoint_id=str(path / "shards"))
        set_state_dict(model, opt, model_state_dict=both["model"], optim_state_dict=both["optim"])
    else:
        if not (path / "model.safetensors").exists():
            raise UserError(f"{path} was written by an FSDP run; resume it with pretrain.distributed: fsdp")
        load_model(model, str(path / "model.safetensors"))
        opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


def transformer_blocks(model) -> list:
    """The repeated blocks FSDP shards one by one (BERT/RoBERTa encoder layers, GPT-2 ``h``, Llama ``layers``)."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in {"layer", "h", "layers", "blocks"}:
            return list(module)
    raise UserError(f"pretrain.distributed fsdp: no block list (layer/h/layers) found in {type(model).__name__}; use ddp")


def shard_model(model, device, world: int) -> None:
    """FSDP2: shard each transformer block, then the rest (embeddings, tied head) at the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_model_state(model) -> dict:
    """Gather the FSDP-sharded weights into one full state dict in rank 0's CPU memory, a tensor at a time
    (other ranks get ``{}``): the final model is saved without any GPU holding all of it. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --- distributed ---------------------------------------------------------------------------

def _dist_setup():
    """(rank, world_size, device); initialises torch.distributed under torchrun."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _to_device(t, device):
    # pinned host memory makes the copy asynchronous, so it overlaps the previous step's kernels
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _precision(params: PretrainParams, device) -> str:
    import torch

    if params.precision != "auto":
        return params.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


STOP_BUDGET, STOP_SIGNAL = 1, 2


@contextlib.contextmanager
def _sigterm_flag():
    """While training, SIGTERM (a Kubernetes eviction, a spot preemption, torchrun passing it on) only sets a
    flag: the loop then checkpoints the current step and stops, instead of losing the work since the last
    periodic checkpoint. Outside the main thread signals cannot be caught; the flag just stays unset."""
    import signal
    import threading

    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["signal"] = signum

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_request(params: PretrainParams, elapsed: float, signalled: dict, world: int, device, log_step: bool) -> int:
    """0, STOP_BUDGET or STOP_SIGNAL. Under DDP/FSDP every rank must stop at the same step (or the others wait
    in a collective forever), so ranks agree at log steps, where the host syncs anyway; one process decides
    at every step."""
    want = STOP_SIGNAL if signalled["signal"] is not None else STOP_BUDGET if params.time_budget_s and elapsed > params.time_budget_s else 0
    if world == 1:
        return want
    if not log_step:
        return 0
    import torch

    flag = torch.tensor([want], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def sdpa_context(backend: str):
    """A context that forces one SDPA kernel (``pretrain.sdpa_backend``); ``auto`` leaves PyTorch's choice."""
    if backend == "auto":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    return lambda: sdpa_kernel([chosen])


def pretrain(blocks_path: Path, tokenizer_dir: Path, params: PretrainParams, seed: int, out_dir: Path, progress: bool = True,
             checkpoint_dir: Path | None = None) -> PretrainSummary:
    """Train; checkpoints go to ``checkpoint_dir`` (default ``out_dir/checkpoints``), and the newest one there
    is resumed from, so pointing a re-run at the same folder continues a killed run."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from tasks.plots import loss_curve
    from tasks.tokenize import load_tokenizer

    rank, world, device = _dist_setup()
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
    precision = _precision(params, device)
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
    with _sigterm_flag() as signalled:
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
                batch = _batch(blocks[train_index[idx]], tokenizer, params.objective, params.mlm_probability, gen, continuation, padded)
                batch = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
                if sparse is not None:
                    batch["mlm_positions"], batch["mlm_targets"] = sparse_targets(batch.pop("labels"))
                batch = {k: _to_device(v, device) for k, v in batch.items()}
                if sparse is not None and params.compile:
                    # the masked count changes every step: one dynamic-shape graph instead of a recompile per count
                    torch._dynamo.maybe_mark_dynamic(batch["mlm_positions"], 0)
                    torch._dynamo.maybe_mark_dynamic(batch["mlm_targets"], 0)
                sync = contextlib.nullcontext() if world == 1 or fsdp or micro == params.grad_accum - 1 else train_model.no_sync()
                with sync, attention(), (autocast() if autocast else contextlib.nullcontext()):
                    try:
                        loss = train_model(**batch).loss / params.grad_accum
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
                _sync(device)
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
                history[-1]["eval_loss"] = round(evaluate_lm(model, eval_blocks, tokenizer, params.objective, params.mlm_probability, per_rank,
                                                             seed, device, autocast, padded), 4)
                paused += time.perf_counter() - t
            stop = _stop_request(params, elapsed, signalled, world, device, log_step=step % params.log_every == 0 or step == params.max_steps)
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
    _sync(device)
    if profiler is not None:
        _write_profile(profiler, out_dir, device)
    running = float(running)
    elapsed = elapsed_before + time.perf_counter() - start
    end_train = time.perf_counter()
    eval_loss = evaluate_lm(model, eval_blocks, tokenizer, params.objective, params.mlm_probability, per_rank, seed, device, autocast, padded)
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


def state_digest(model, state: dict | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted((state if state is not None else model.state_dict()).items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _model_card(model_dir: Path, params: PretrainParams, s: PretrainSummary, block_size: int) -> None:
    import sys

    (model_dir / "README.md").write_text(
        f"# Domain-pretrained {params.objective.upper()} model (lmops)\n\n"
        f"- base: {params.base_model or 'from config'} · parameters {s.parameters:,} · block size {block_size}\n"
        f"- steps {s.steps} · tokens seen {s.tokens:,} · held-out loss {s.eval_loss} · perplexity {s.perplexity}\n"
        f"- data version: see the run's lineage (`data.dvc`) · {s.world_size} process(es) on {s.device}, {s.precision}\n"
        f"- command: `{' '.join(['lmops', *sys.argv[1:]])}`\n"
    )
