"""Distributed setup for pretraining: process group under torchrun / accelerate, FSDP2 sharding, and
stopping every rank at the same step (time budget, SIGTERM)."""

from __future__ import annotations

import contextlib
import os

from lmops.config import PretrainParams
from lmops.errors import UserError


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


def dist_setup():
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


def device_sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def to_device(t, device):
    # pinned host memory makes the copy asynchronous, so it overlaps the previous step's kernels
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


STOP_BUDGET, STOP_SIGNAL = 1, 2


@contextlib.contextmanager
def sigterm_flag():
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


def stop_request(params: PretrainParams, elapsed: float, signalled: dict, world: int, device, log_step: bool) -> int:
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
