"""Retention: prune old run folders (each holds several model copies) without touching what matters.

Kept always: the newest ``keep`` runs, every run younger than ``min_age_days`` (it may still be running), and
every run whose model holds a registry alias (``champion``, ``challenger``): its folder is where the lineage
tag ``run_dir`` points an auditor. Registered versions themselves never depend on a run folder (their
artifacts are copied into the registry's store), so a pruned run never breaks a load or a gate.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # run folder -> why it was kept
    freed_bytes: int = 0
    dry_run: bool = False


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def referenced_runs() -> dict[str, str]:
    """Run folders named by registered versions that hold an alias: {resolved path: "name vN (alias)"}."""
    from lmops.tasks import registry

    c = registry.client()
    out: dict[str, str] = {}
    for rm in c.search_registered_models():  # a lock (lmops-lock.*) has no aliases: nothing to keep
        for alias, version in (rm.aliases or {}).items():
            mv = c.get_model_version(rm.name, str(version))
            run_dir = (mv.tags or {}).get("run_dir")
            if run_dir:
                out[str(Path(run_dir).resolve())] = f"{rm.name} v{version} ({alias})"
    return out


def prune_runs(runs: Path, keep: int = 10, min_age_days: float = 7.0, dry_run: bool = False) -> PruneReport:
    report = PruneReport(dry_run=dry_run)
    if not runs.is_dir():
        return report
    folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    referenced = referenced_runs()
    cutoff = time.time() - min_age_days * 86400
    for i, folder in enumerate(folders):
        why = None
        if str(folder.resolve()) in referenced:
            why = f"registry: {referenced[str(folder.resolve())]}"
        elif i < keep:
            why = f"among the newest {keep}"
        elif folder.stat().st_mtime > cutoff:
            why = f"younger than {min_age_days:g} days"
        if why:
            report.kept[folder.name] = why
            continue
        report.freed_bytes += _size(folder)
        report.removed.append(folder.name)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return report
