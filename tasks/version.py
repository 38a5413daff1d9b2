"""Version: track the ingested snapshot in DVC (``data/`` → ``data.dvc``) and push it to the remote.

The DVC md5 of ``data/`` is the data version carried into the lineage of every model trained on it.
"""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from lmops.errors import TransientError, UserError

SNAPSHOT_FILES = ("train.parquet", "validation.parquet", "test.parquet", "auxiliary.parquet", "corpus.parquet", "quarantine.parquet",
                  "summary.json")
BATCHES = "batches"  # data handed in between runs (tasks/arrival.py), one folder per batch, carried from version to version


@dataclass
class DataVersion:
    md5: str
    path: str
    dvc_file: str
    remote: str | None
    pushed: bool


def ensure_dvc_repo(root: Path, default_remote: Path) -> str:
    """``dvc init`` if needed, analytics off, and a local-folder default remote unless one is set.

    A team's own remote (``dvc remote add -d storage s3://…``) is left alone. Returns the remote name.
    """
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        Repo.init(str(root), no_scm=not (root / ".git").exists())
    repo = Repo(str(root))
    try:
        with repo.config.edit(level="repo") as conf:
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
        current = repo.config.get("core", {}).get("remote")
        if current:
            return current
        default_remote.mkdir(parents=True, exist_ok=True)
        # Machine-specific path → config.local (git-ignored), so the committed config stays portable.
        with repo.config.edit(level="local") as conf:
            conf["remote"]["lmops-local"] = {"url": str(default_remote)}
            conf["core"]["remote"] = "lmops-local"
        return "lmops-local"
    finally:
        repo.close()


@contextmanager
def data_lock(root: Path, data_dir: str = "data", timeout_s: float = 600) -> Iterator[None]:
    """One writer of ``root/data`` + ``data.dvc`` at a time (swap, ``dvc add``, push, reading the md5, checkout):
    without it a run can record another run's md5, or die on DVC's own lock half-way."""
    from lmops.tasks.locks import file_lock

    with file_lock(root / f".{data_dir}.lock", timeout_s, f"versioning {data_dir}/"):
        yield


def _recover(root: Path, data_dir: str) -> None:
    """Finish or undo a swap a killed run left half-done: ``data/`` moved aside but the new one not in place."""
    target, old = root / data_dir, root / f".{data_dir}.old"
    if old.is_dir() and not target.exists():
        old.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".{data_dir}.staging*"):
        shutil.rmtree(stale, ignore_errors=True)


def snapshot(root: Path, ingest_dir: Path, default_remote: Path, data_dir: str = "data") -> DataVersion:
    """Replace ``root/data`` with the ingested snapshot, ``dvc add`` it and push it, under :func:`data_lock`."""
    target = root / data_dir
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; move it away so lmops can version data there")
    with data_lock(root, data_dir):
        remote = ensure_dvc_repo(root, default_remote)
        _recover(root, data_dir)
        md5 = _swap_add_push(root, ingest_dir, target, remote, data_dir)
    return DataVersion(md5=md5, path=str(target), dvc_file=str(root / f"{data_dir}.dvc"), remote=remote, pushed=True)


def _swap_add_push(root: Path, ingest_dir: Path, target: Path, remote: str, data_dir: str) -> str:
    import logging

    from dvc.repo import Repo

    from lmops.faults import fault_point

    staging = root / f".{data_dir}.staging"
    copy_snapshot(ingest_dir, staging)
    # Swap in one rename so a crash never leaves a half-copied data/ behind.
    old = root / f".{data_dir}.old"
    if target.exists():
        target.rename(old)
    fault_point("version.swap")
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)

    # DVC's "git add data.dvc" hints are for interactive use; the pipeline records the version itself.
    logging.getLogger("dvc").setLevel(logging.WARNING)
    repo = Repo(str(root))
    try:
        repo.add(str(target))
        fault_point("version.added")
        try:
            repo.push(remote=remote)
        except Exception as exc:  # noqa: BLE001 - remotes fail in many library-specific ways
            raise TransientError(f"dvc push to remote {remote!r} failed: {exc}; check the remote with `dvc remote list`") from exc
    finally:
        repo.close()
    md5 = read_data_version(root / f"{data_dir}.dvc")
    _log_version(md5, target)
    return md5


def _versions_log() -> Path:
    from lmops.env import lmops_home

    return lmops_home() / "data-versions.jsonl"


def _log_version(md5: str, data: Path) -> None:
    """Remember each snapshot (md5, when, row counts) so `lmops data versions` can list them."""
    import json
    import time

    summary = json.loads((data / "summary.json").read_text()) if (data / "summary.json").exists() else {}
    rec = {"md5": md5, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "splits": summary.get("splits", {}),
           "corpus_rows": summary.get("corpus_rows"), "sources": {k: v.get("kept") for k, v in summary.get("sources", {}).items()},
           "label_counts": summary.get("label_counts", {})}
    log = _versions_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def list_versions() -> list[dict]:
    """Snapshots in first-seen order, newest last; repeated md5s collapse to their first record."""
    import json

    log = _versions_log()
    out: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec["md5"], rec)
    return list(out.values())


def checkout(root: Path, version: str, data_dir: str = "data") -> str:
    """Restore ``data/`` to a snapshot (full md5 or a unique prefix) from the DVC cache or remote."""
    from dvc.repo import Repo

    matches = [v["md5"] for v in list_versions() if v["md5"].startswith(version)]
    if not matches and version.endswith(".dir") and len(version) == 36:
        matches = [version]
    if len(matches) != 1:
        known = ", ".join(v["md5"][:12] for v in list_versions()) or "none"
        raise UserError(f"data version {version!r} matches {len(matches)} snapshot(s) (known: {known}); give more of the md5")
    md5 = matches[0]
    dvc_file = root / f"{data_dir}.dvc"
    meta = yaml.safe_load(dvc_file.read_text()) if dvc_file.exists() else {"outs": [{"path": data_dir, "hash": "md5"}]}
    meta["outs"][0] = {"md5": md5, "path": data_dir, "hash": "md5"}
    with data_lock(root, data_dir):
        dvc_file.write_text(yaml.safe_dump(meta, sort_keys=False))
        repo = Repo(str(root))
        try:
            try:
                repo.checkout(targets=[str(dvc_file)], force=True)
            except Exception:  # noqa: BLE001 - not in the local cache: fetch from the remote
                repo.pull(targets=[str(dvc_file)], force=True)
        finally:
            repo.close()
    return md5


def manifest(root: Path, md5: str) -> dict[str, str] | None:
    """``{relative path: md5}`` of the files of data version ``md5``, from the local DVC cache (None if not there)."""
    import json

    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except Exception:  # noqa: BLE001 - not a DVC repo yet
        return None
    try:
        path = Path(repo.cache.local.oid_to_path(md5))
    finally:
        repo.close()
    if not path.is_file():
        return None
    return {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}


def cached_file(root: Path, md5: str, relpath: str) -> Path | None:
    """One file of data version ``md5`` in the local DVC cache (None if the version or the file is not there)."""
    from dvc.repo import Repo

    files = manifest(root, md5)
    if not files or relpath not in files:
        return None
    repo = Repo(str(root))
    try:
        path = Path(repo.cache.local.oid_to_path(files[relpath]))
    finally:
        repo.close()
    return path if path.is_file() else None


def snapshot_files(snapshot_dir: Path) -> list[str]:
    """The files that make a snapshot (what versioning copies into data/), relative to it."""
    batches = snapshot_dir / BATCHES
    return [name for name in SNAPSHOT_FILES if (snapshot_dir / name).is_file()] + sorted(
        f.relative_to(snapshot_dir).as_posix() for f in (batches.rglob("*") if batches.is_dir() else []) if f.is_file())


def copy_snapshot(src: Path, dst: Path) -> None:
    """Copy a snapshot's files (not a run's extras such as REUSED.json) into ``dst``, creating it."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in snapshot_files(src):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)


def current_version_of(root: Path, snapshot_dir: Path, data_dir: str = "data") -> str | None:
    """The md5 of the data version ``data.dvc`` names if ``snapshot_dir`` holds exactly its files (DVC's own
    manifest, file md5s compared), else None."""
    import hashlib

    dvc_file = root / f"{data_dir}.dvc"
    if not dvc_file.is_file():
        return None
    md5 = read_data_version(dvc_file)
    recorded = manifest(root, md5)
    if recorded is None:
        return None
    ours = {}
    for name in snapshot_files(snapshot_dir):
        with open(snapshot_dir / name, "rb") as fh:
            ours[name] = hashlib.file_digest(fh, "md5").hexdigest()
    return md5 if ours == recorded else None


def read_data_version(dvc_file: Path) -> str:
    meta = yaml.safe_load(dvc_file.read_text())
    return meta["outs"][0]["md5"]


def git_info(root: Path) -> dict[str, str | bool | None]:
    """The code version: commit and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # Untracked files count: a new module the run imported is code the commit does not hold. What lmops itself
    # writes next to the code (the data pointer, DVC's folder) is recorded as the data version instead.
    status = git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":!data.dvc", ":!.dvc", ":!.dvcignore", ":!.gitignore")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}
