"""Pretraining checkpoints: atomic (written to a temporary folder, ``state.json`` last, then renamed),
pruned to the newest few, sharded under FSDP (each rank writes and reads only its own shards), keyed
by data + params so a re-run of the same inputs resumes, and optionally mirrored to an object store
(:class:`CheckpointMirror`) so the re-run resumes on another machine too."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lmops.config import PretrainParams
from lmops.errors import UserError


def resume_key(tokenized_key: str, params: PretrainParams, seed: int) -> str:
    """A pretraining's identity: the tokenized data (its cache key) and the params. The same key resumes."""
    import hashlib

    return hashlib.sha256(json.dumps([tokenized_key, params.model_dump(mode="json"), seed], sort_keys=True).encode()).hexdigest()[:16]


def resume_dir(key: str) -> Path:
    """Where the pipeline keeps the checkpoints of pretraining ``key`` (:func:`resume_key`), so re-running a
    killed flow with the same inputs resumes instead of starting over."""
    from lmops.env import lmops_home

    return lmops_home() / "checkpoints" / f"pretrain-{key}"


@contextmanager
def claim(ckpt_dir: Path, timeout_s: float = 24 * 3600) -> Iterator[None]:
    """Own ``ckpt_dir`` for one pretraining: two runs with the same key would prune each other's temporary
    checkpoints and the first to finish would delete the folder under the other. The second waits (its resume
    then finds the folder gone, or the first run's checkpoints if it was killed) and names who holds it."""
    import socket

    from lmops.tasks.locks import file_lock

    owner = Path(str(ckpt_dir) + ".owner")

    def holder() -> str:
        return owner.read_text() if owner.exists() else "another process"

    with file_lock(Path(str(ckpt_dir) + ".lock"), timeout_s, f"checkpoints {ckpt_dir} (the same data and params pretraining)", holder):
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}")
        try:
            yield
        finally:
            owner.unlink(missing_ok=True)


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


def state_digest(model, state: dict | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted((state if state is not None else model.state_dict()).items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class CheckpointMirror:
    """Checkpoints copied to an object-store prefix (``cache.checkpoint_url``), for workers that share no disk: a
    re-run on a fresh container or another machine resumes where the killed one stopped.

    The layout on disk is kept (``<prefix>/pretrain-<key>/step-N/...``) and so is its rule: a step is complete
    once its ``state.json`` exists, which is uploaded last, so a worker killed mid-upload leaves a step the next
    one ignores. Older steps are pruned to ``pretrain.keep_checkpoints`` after each upload; the whole prefix is
    removed when pretraining finishes. Endpoint and credentials come from the usual AWS_* variables
    (``AWS_ENDPOINT_URL`` for an S3-compatible store), as for the landing prefix and the DVC remote."""

    def __init__(self, url: str, key: str):
        import boto3

        self.bucket, _, base = url[len("s3://"):].partition("/")
        self.prefix = "/".join(x for x in (base.strip("/"), f"pretrain-{key}") if x) + "/"
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.s3 = boto3.client("s3")

    def _objects(self) -> dict[str, list[str]]:
        """{step folder name: its object keys}."""
        out: dict[str, list[str]] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for o in page.get("Contents", []):
                step = o["Key"][len(self.prefix):].split("/", 1)[0]
                out.setdefault(step, []).append(o["Key"])
        return out

    def complete(self, objects: dict[str, list[str]] | None = None) -> list[str]:
        """Complete steps on the store (or in a listing of it already made), oldest first."""
        return sorted(step for step, keys in (self._objects() if objects is None else objects).items()
                      if step.startswith("step-") and f"{self.prefix}{step}/state.json" in keys)

    def push(self, step_dir: Path, keep: int) -> None:
        """Upload one published checkpoint (state.json last), then prune the store to the newest ``keep``."""
        files = sorted((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.name == "state.json")
        for f in files:
            self.s3.upload_file(str(f), self.bucket, f"{self.prefix}{step_dir.name}/{f.relative_to(step_dir).as_posix()}")
        objects = self._objects()
        keepers = self.complete(objects)[-keep:]
        for step, keys in objects.items():  # older ones, and what a killed upload left unfinished
            if step not in keepers:
                self._delete(keys)

    def pull(self, ckpt_dir: Path) -> Path | None:
        """Download the newest complete checkpoint on the store into ``ckpt_dir`` when it is newer than the newest
        there (atomically: into a temporary folder, then renamed); returns it, else None."""
        objects = self._objects()
        done = self.complete(objects)
        local = latest_checkpoint(ckpt_dir)
        if not done or (local is not None and local.name >= done[-1]):
            return None
        step = done[-1]
        tmp = ckpt_dir / f".tmp-{step}-pull-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for key in objects[step]:
            target = tmp / key[len(f"{self.prefix}{step}/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, key, str(target))
        final = ckpt_dir / step
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        print(f"resuming from {self.url}{step} (checkpoint mirrored by an earlier run)")
        return final

    def clear(self) -> None:
        for keys in self._objects().values():
            self._delete(keys)

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def mirrored(url: str | None, key: str, ckpt_dir: Path, keep: int) -> tuple[Callable[[Path], None] | None, Callable[[], None]]:
    """With a ``cache.checkpoint_url``: pull the newest mirrored checkpoint into ``ckpt_dir`` now (rank 0), and
    return (the upload to call after each checkpoint, the cleanup to call when pretraining finished)."""
    if not url:
        return None, lambda: None
    mirror = CheckpointMirror(url, key)
    if int(os.environ.get("RANK", "0")) == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        mirror.pull(ckpt_dir)
    return (lambda step_dir: mirror.push(step_dir, keep)), mirror.clear
