"""Version: track the ingested snapshot in DVC (``data/`` → ``data.dvc``) and push it to the remote.

The DVC md5 of ``data/`` is the data version carried into the lineage of every model trained on it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmops.errors import TransientError, UserError

SNAPSHOT_FILES = ("train.parquet", "validation.parquet", "test.parquet", "corpus.parquet", "quarantine.parquet", "summary.json")


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


def snapshot(root: Path, ingest_dir: Path, default_remote: Path, data_dir: str = "data") -> DataVersion:
    """Replace ``root/data`` with the ingested snapshot, ``dvc add`` it and push it."""
    from dvc.repo import Repo

    remote = ensure_dvc_repo(root, default_remote)
    target = root / data_dir
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; move it away so lmops can version data there")
    staging = root / f".{data_dir}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in SNAPSHOT_FILES:
        if (ingest_dir / name).exists():
            shutil.copy2(ingest_dir / name, staging / name)
    # Swap in one rename so a crash never leaves a half-copied data/ behind.
    old = root / f".{data_dir}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)

    import logging

    # DVC's "git add data.dvc" hints are for interactive use; the pipeline records the version itself.
    logging.getLogger("dvc").setLevel(logging.WARNING)
    repo = Repo(str(root))
    try:
        repo.add(str(target))
        pushed = False
        try:
            repo.push(remote=remote)
            pushed = True
        except Exception as exc:  # noqa: BLE001 - remotes fail in many library-specific ways
            raise TransientError(f"dvc push to remote {remote!r} failed: {exc}; check the remote with `dvc remote list`") from exc
    finally:
        repo.close()
    dvc_file = root / f"{data_dir}.dvc"
    md5 = read_data_version(dvc_file)
    return DataVersion(md5=md5, path=str(target), dvc_file=str(dvc_file), remote=remote, pushed=pushed)


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
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}
