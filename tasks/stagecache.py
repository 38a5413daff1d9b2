"""Reuse a stage's result across runs when everything it depends on is the same.

A stage's key hashes its inputs: the bytes of the data files it reads, its params section, the identity of
the model it starts from, the seed, and the code version (the lmops sources and the versions of the libraries
that compute). A finished stage's output folder and summary are published under
``$LMOPS_HOME/cache/stages/<stage>/<key>/``; a later run with the same key links them into its own run folder
instead of computing them. Any change to an input is a new key, so a result is never reused for other inputs;
the worst a stale entry can cost is disk, bounded by ``cache.max_gb`` (least recently used go first).

Files are hard-linked both ways where the filesystem allows (no stage rewrites another stage's files).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

S = TypeVar("S")
_OUT = "{OUT}"  # the run folder's path inside a stored summary
_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "datasets", "accelerate", "numpy", "pandas", "pyarrow",
              "scikit-learn", "great-expectations")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the lmops sources and of the library versions that compute results: a changed line anywhere in
    lmops, or an upgraded torch, makes every key new (correct at the price of recomputing)."""
    from importlib import metadata, util

    h = hashlib.sha256()
    for name in ("lmops", "lmops.tasks", "lmops.flows"):  # located, not imported: tasks sit below flows
        pkg = Path(util.find_spec(name).origin).resolve().parent
        for path in sorted(pkg.rglob("*.py")):
            # the monitor trains nothing: changing it must not make every model look stale
            if "__pycache__" not in path.parts and not (name == "lmops.tasks" and path.relative_to(pkg).parts[0] == "monitor") \
                    and not (name == "lmops.flows" and path.name == "monitor.py"):
                h.update(f"{name}/{path.relative_to(pkg)}".encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib}=={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}==none\0".encode())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(path: Path) -> str:
    """A file's digest, or a folder's over every file below it (relative names and bytes; links followed)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def model_identity(ref: str | Path) -> str:
    """What a base model *is*: the digest of a local folder's files, else the reference itself (hub id, pkg:NAME)."""
    return tree_digest(Path(ref)) if Path(ref).is_dir() else str(ref)


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "code": code_version(), **inputs}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _jsonable(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def cache_root() -> Path:
    from lmops.env import lmops_home

    return lmops_home() / "cache" / "stages"


@dataclasses.dataclass
class Reused:
    """Where a reused result came from, for the run's log and artifacts."""

    stage: str
    key: str
    origin: str  # the run folder that computed it


def reuse(stage: str, key: str, out: Path, compute: Callable[[], S], load: Callable[[dict], S],
          max_gb: float | None = None) -> tuple[S, Reused | None]:
    """The stored result for ``key`` linked into ``out``, or ``compute()`` (which writes ``out``) stored for next time.

    ``load`` rebuilds the summary from its stored dict, whose paths into ``out`` are re-rooted to this run's ``out``."""
    entry = cache_root() / stage / key
    if (entry / "summary.json").is_file():
        stored = json.loads((entry / "summary.json").read_text())
        if out.exists():
            shutil.rmtree(out)
        _link_tree(entry / "out", out)
        os.utime(entry / "summary.json")  # least recently used goes first when pruning
        summary = load(json.loads(json.dumps(stored["summary"]).replace(_OUT, str(out))))
        return summary, Reused(stage, key, stored.get("origin", ""))
    summary = compute()
    _publish(entry, out, summary)
    prune(max_gb, keep=[entry])
    return summary, None


def _publish(entry: Path, out: Path, summary: Any) -> None:
    """Store atomically: a reader sees a complete entry or none; the first of two racing writers wins."""
    data = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else summary
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(out, tmp / "out")
    (tmp / "summary.json").write_text(json.dumps({"summary": json.loads(json.dumps(data, default=str).replace(str(out), _OUT)),
                                                  "origin": str(out.parent), "stored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    try:
        tmp.rename(entry)
    except OSError:  # another run stored the same key first: same inputs, so the same result
        shutil.rmtree(tmp, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    from lmops.tasks.tokenize import _link_or_copy

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=_link_or_copy, symlinks=True)


def prune(max_gb: float | None, keep: list[Path] = ()) -> list[Path]:
    """Remove least recently used entries until the stage cache is within ``max_gb``; returns what went."""
    root = cache_root()
    if max_gb is None or not root.is_dir():
        return []
    entries = [e for e in root.glob("*/*") if (e / "summary.json").is_file()]
    sizes = {e: sum(f.stat().st_size for f in e.rglob("*") if f.is_file()) for e in entries}
    total, limit, gone = sum(sizes.values()), max_gb * 1e9, []
    for e in sorted(entries, key=lambda e: (e / "summary.json").stat().st_mtime):
        if total <= limit:
            break
        if e in keep:
            continue
        shutil.rmtree(e, ignore_errors=True)
        total -= sizes[e]
        gone.append(e)
    return gone
