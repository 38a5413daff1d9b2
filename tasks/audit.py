"""Audit: which data, params and code produced a registered model, and how it scored.

``restore`` rebuilds the inputs of a version in a folder: the exact data snapshot (pulled by its DVC
md5 from the remote), the exact resolved params, and the code at the recorded commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lmops.errors import UserError
from lmops.tasks import registry


def _artifact_json(run_id: str, path: str) -> Any:
    import mlflow

    registry.client()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
        except Exception:  # noqa: BLE001 - older versions may lack an artifact
            return None
        return json.loads(Path(local).read_text())


def lineage(ref: str) -> dict[str, Any]:
    info = registry.show(ref)
    run_id = info["run_id"]
    events = [e for e in registry.history(info["name"]) if str(info["version"]) in (e["to_version"], e["from_version"])]
    return {
        **{k: v for k, v in info.items() if k != "tags"},
        "params": _artifact_json(run_id, "lineage/params.json"),
        "gate": _artifact_json(run_id, "gate/decision.json"),
        "validation": (_artifact_json(run_id, "validate/validation.json") or {}).get("success"),
        "events": events,
    }


def to_text(lin: dict[str, Any]) -> str:
    lines = [
        f"{lin['name']} v{lin['version']}  aliases: {', '.join(lin['aliases']) or '-'}  created {lin['created']}",
        f"  data      DVC md5 {lin['data_version']}",
        f"  params    hash {lin['params_hash']}",
        f"  code      git {lin['git_commit']}{' (uncommitted changes)' if lin.get('git_dirty') else ''}",
        f"  flow run  {lin['flow_run_id']}  deployment {lin.get('deployment_id') or '-'}",
        f"  parent    {lin.get('parent_model') or '-'}",
        f"  data validation passed: {lin.get('validation')}",
        "  metrics   " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(lin["metrics"].items())),
        "  gate      " + ("; ".join(lin.get("gate_reasons") or []) or "-"),
    ]
    for e in lin.get("events", []):
        lines.append(f"  event     {e['when']} {e['action']}: v{e['from_version']} → v{e['to_version']} by {e['who']}: {e['reason']}")
    return "\n".join(lines)


def _remote_config(root: Path) -> dict[str, Any]:
    """The default DVC remote's whole section (url, endpoint, region, credentials, …) as the project sees it,
    every config level merged: a URL alone does not reach an S3-compatible store with its own endpoint."""
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        conf = repo.config
        name = conf["core"].get("remote")
        if not name:
            raise UserError(f"{root}: no default DVC remote; run `lmops init` or `dvc remote add -d`")
        return dict(conf["remote"][name])
    finally:
        repo.close()


def restore(ref: str, dest: Path, project_root: Path) -> dict[str, Any]:
    """Write ``dest/params.yaml``, pull ``dest/data/`` at the recorded md5, export the code."""
    from dvc.repo import Repo

    lin = lineage(ref)
    if lin["params"] is None:
        raise UserError(f"{ref}: no params recorded with this version; it cannot be restored")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} is not empty; pass a new folder to --restore")
    remote = _remote_config(project_root)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        (dest / "params.yaml").write_text(yaml.safe_dump(lin["params"], sort_keys=False))
        Repo.init(str(dest), no_scm=True)
        repo = Repo(str(dest))
        try:
            with repo.config.edit(level="repo") as conf:
                conf["core"]["analytics"] = False
                conf["core"]["remote"] = "origin"
            # the remote's section may hold credentials: config.local, as `dvc remote modify --local` keeps them
            with repo.config.edit(level="local") as conf:
                conf["remote"]["origin"] = remote
            (dest / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": lin["data_version"], "path": "data", "hash": "md5"}]}))
            repo.pull()
        finally:
            repo.close()
    except Exception as exc:
        # nothing half-restored stays behind: a retry must not be refused as "not empty"
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, UserError):
            raise
        from lmops.errors import TransientError

        raise TransientError(f"restoring {ref}: pulling data {lin['data_version']} from the DVC remote {remote.get('url')} failed ({exc}); "
                             f"{dest} was removed, retry when the remote is reachable") from exc
    code = None
    if lin["git_commit"]:
        code = dest / "code"
        code.mkdir()
        archive = subprocess.run(["git", "archive", lin["git_commit"]], cwd=project_root, capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        else:
            code = None
    (dest / "AUDIT.md").write_text(
        f"# Restored inputs of {lin['name']} v{lin['version']}\n\n```\n{to_text(lin)}\n```\n\n"
        f"- `data/`: the snapshot with DVC md5 `{lin['data_version']}`\n- `params.yaml`: the exact resolved params\n"
        f"- `code/`: the repository at `{lin['git_commit']}`" + (" (the run had uncommitted changes)" if lin.get("git_dirty") else "") + "\n\n"
        "Reproduce (trains on the restored `data/`, not on today's sources):\n"
        "`cd code && make setup && .venv/bin/lmops run --params ../params.yaml --data ../data`\n"
    )
    return {"restored": str(dest), "data_version": lin["data_version"], "params": str(dest / "params.yaml"), "code": str(code) if code else None}
