"""Register: MLflow run tracking and model registry (SQLite under LMOPS_HOME by default).

A version is created only after its artifacts are fully logged and read back, so a crash never
leaves a registered version without its files. The ``champion`` alias moves only on promotion,
under a lock with compare-and-set: if the champion changed while this run was gating, the
candidate is not promoted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lmops.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    promoted: bool
    aliases: list[str]
    reason: str


_CLIENTS: dict[str, Any] = {}


def client():
    """An MlflowClient for the configured URI; the first use creates the SQLite schema under a lock,
    because two processes migrating a new database at once corrupt its version table."""
    import mlflow
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    from lmops.env import lmops_home, mlflow_tracking_uri

    uri = mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri not in _CLIENTS:
        lock = lmops_home() / "mlflow" / "init.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            c = MlflowClient(tracking_uri=uri, registry_uri=uri)
            c.search_experiments(max_results=1)
            c.search_registered_models(max_results=1)
        _CLIENTS[uri] = c
    return _CLIENTS[uri]


def registry_lock(name: str, timeout_s: float = 120):
    """Serialize champion changes of model ``name`` on this machine and, with a Prefect server, across machines."""
    from lmops.tasks.locks import exclusive

    return exclusive(f"registry-{name}", timeout_s, what="the registry")


def _is_missing(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "does not exist" in text.lower()


def get_version(name: str, ref: str | None = None):
    """``ref``: an alias (``champion``), a version number, or None for the latest version."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        if ref is None:
            versions = c.search_model_versions(f"name='{name}'")
            return max(versions, key=lambda v: int(v.version)) if versions else None
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def find_version(name: str, **tags: str) -> dict[str, Any] | None:
    """The newest version of ``name`` whose lineage tags have all these values (``lmops models show`` shape), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    hits = [v for v in versions if all((v.tags or {}).get(k) == val for k, val in tags.items())]
    return describe(max(hits, key=lambda v: int(v.version))) if hits else None


def promotion_settled(name: str, version: str | int) -> bool:
    """False when ``version`` passed its gate but never became champion (a run killed between registering it and
    moving the alias): a re-run must carry that decision out, not call the version "no change"."""
    mv = get_version(name, str(version))
    if mv is None or (mv.tags or {}).get("gate_promote") != "true":
        return True
    return any(e["to_version"] == str(version) for e in history(name))


def parse_ref(text: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME@VERSION`` / ``NAME/VERSION``."""
    for sep in ("@", "/"):
        if sep in text:
            name, ref = text.split(sep, 1)
            return name, ref
    return text, None


def download_model(source: str, dst: Path) -> Path:
    import mlflow

    client()
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst)))


def _experiment_id(name: str) -> str:
    from lmops.env import mlflow_artifact_root

    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # A local backend (the embedded SQLite default) keeps artifacts under LMOPS_HOME, not ./mlruns;
    # a team's tracking server chooses its own artifact store.
    uri = c.tracking_uri
    location = f"{mlflow_artifact_root()}/{name}" if uri.startswith(("sqlite:", "file:", "/")) else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another run (another machine) created it first: use theirs
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = json.dumps(value) if not isinstance(value, str) else value
    return out


def training_curves(pretrain_history: list[dict], finetune_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``series`` for :func:`log_candidate`: pretraining loss/lr/tokens per s/MFU/held-out loss by step, fine-tuning by epoch."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for prefix, history, x in (("pretrain", pretrain_history, "step"), ("finetune", finetune_history, "epoch")):
        for h in history:
            for k, v in _leaves(h):
                if k != x:
                    curves.setdefault(f"{prefix}/{k}", []).append((h[x], v))
    return curves


def _leaves(d: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, number) of a nested dict: one curve per source (val_by_source), and the averaged weights' scores
    (averaged.val_loss, averaged.val_by_source.tweets)."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", v


def log_candidate(experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str], artifacts: dict[str, Path],
                  series: dict[str, list[tuple[int, float]]] | None = None) -> tuple[str, str]:
    """One MLflow run with params, metrics, tags and artifact folders/files. Returns (run_id, model source).

    ``series``: per-step metrics (name → [(step, value)]), e.g. the pretraining loss curve, so the MLflow UI
    can plot them."""
    c = client()
    run = c.create_run(_experiment_id(experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        flat = _flatten(params)
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = [Param(k, v[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            c.log_batch(run_id, params=items[i : i + 100])
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], tags=[RunTag(k, str(v)) for k, v in tags.items()])
        points = [Metric(k, float(v), now, int(step)) for k, pts in (series or {}).items() for step, v in pts]
        for i in range(0, len(points), 1000):  # MLflow's log_batch limit
            c.log_batch(run_id, metrics=points[i : i + 1000])
        for dest, path in artifacts.items():
            if path is None or not Path(path).exists():
                continue
            if Path(path).is_dir():
                c.log_artifacts(run_id, str(path), artifact_path=dest)
            else:
                c.log_artifact(run_id, str(path), artifact_path=dest)
        c.set_terminated(run_id, "FINISHED")
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    return run_id, f"{run.info.artifact_uri}/model"


def register_version(name: str, run_id: str, source: str, tags: dict[str, str], promote: bool, expected_champion: str | None, description: str = "") -> Registration:
    """Create the version; move ``champion`` only if promoting and the champion is still ``expected_champion``."""
    from mlflow.exceptions import MlflowException

    c = client()
    with registry_lock(name):
        reconcile(name)
        try:
            c.get_registered_model(name)
        except MlflowException as exc:
            if not _is_missing(exc):
                raise
            try:
                c.create_registered_model(name, description="Managed by lmops; see `lmops models show`.")
            except MlflowException:
                c.get_registered_model(name)  # created by another run in between; anything else re-raises
        current = get_version(name, CHAMPION)
        current_v = str(current.version) if current else None
        expected_champion = str(expected_champion) if expected_champion is not None else None
        mv = c.create_model_version(name, source, run_id=run_id, tags=tags, description=description)
        if promote and current_v != expected_champion:
            promote = False
            reason = f"champion moved from v{expected_champion} to v{current_v} while this run was gating; re-run to compare against it"
        elif promote:
            reason = "gate passed"
        else:
            reason = "gate failed"
        c.set_model_version_tag(name, mv.version, "lmops.promoted", str(promote).lower())
        c.set_model_version_tag(name, mv.version, "lmops.registration", reason)
        c.set_model_version_tag(name, mv.version, "lmops.status", "ready")
        alias = CHAMPION if promote else CHALLENGER
        if promote:
            _move_champion(name, str(mv.version), current_v, "promote (gate)", description or reason)
        else:
            c.set_registered_model_alias(name, alias, mv.version)
    return Registration(name=name, version=str(mv.version), run_id=run_id, promoted=promote, aliases=[alias], reason=reason)


def describe(mv) -> dict[str, Any]:
    """The JSON shape of ``lmops models show``."""
    c = client()
    run = c.get_run(mv.run_id) if mv.run_id else None
    tags = dict(mv.tags or {})
    # Aliases live on the registered model; a ModelVersion's own list can be stale.
    aliases = sorted(a for a, v in (c.get_registered_model(mv.name).aliases or {}).items() if str(v) == str(mv.version))
    return {
        "name": mv.name,
        "version": int(mv.version),
        "aliases": aliases,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000)),
        "metrics": dict(run.data.metrics) if run else {},
        "data_version": tags.get("data_version"),
        "params_hash": tags.get("params_hash"),
        "code_version": tags.get("code_version"),
        "git_commit": tags.get("git_commit"),
        "git_dirty": {"true": True, "false": False}.get(tags.get("git_dirty", ""), None),
        "flow_run_id": tags.get("flow_run_id"),
        "deployment_id": tags.get("deployment_id"),
        "parent_model": tags.get("parent_model"),
        "promoted": tags.get("lmops.promoted") == "true",
        "gate_reasons": json.loads(tags["gate_reasons"]) if "gate_reasons" in tags else [],
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": tags,
    }


def list_models() -> list[dict[str, Any]]:
    c = client()
    out = []
    from lmops.tasks.locks import is_lock

    for rm in c.search_registered_models():
        if is_lock(rm.name):
            continue
        versions = c.search_model_versions(f"name='{rm.name}'")
        out.append({
            "name": rm.name,
            "versions": len(versions),
            "latest_version": max((int(v.version) for v in versions), default=None),
            "aliases": {a: int(v) for a, v in (rm.aliases or {}).items()},
        })
    return sorted(out, key=lambda m: m["name"])


def show(ref_text: str) -> dict[str, Any]:
    name, ref = parse_ref(ref_text)
    mv = get_version(name, ref)
    if mv is None:
        known = [m["name"] for m in list_models()]
        raise UserError(f"no model version {ref_text!r} in the registry (registered models: {known or 'none'}); see `lmops models list`")
    return describe(mv)


# --- audit trail: manual actions, rollback, comparison, verification -------------------------

EVENT_PREFIX = "lmops.event."


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def _event(action: str, to_version: str | None, from_version: str | None, reason: str, state: str) -> dict[str, Any]:
    return {"action": action, "to_version": to_version, "from_version": from_version, "reason": reason,
            "who": _who(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "state": state}


def _move_champion(name: str, version: str, current_v: str | None, action: str, reason: str) -> dict[str, Any]:
    """Move ``champion`` with a write-ahead record: the event is written ``pending`` first, the alias moves,
    then the event is marked ``done``. A crash at any point leaves a record that :func:`reconcile` settles
    from the alias itself, so no champion change is ever unrecorded. Call under :func:`registry_lock`."""
    from lmops.faults import fault_point

    c = client()
    key = f"{EVENT_PREFIX}{time.time_ns()}"
    event = _event(action, version, current_v, reason, "pending")
    c.set_registered_model_tag(name, key, json.dumps(event))
    fault_point("registry.before_alias")
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_model_version_tag(name, version, "lmops.promoted", "true")
    fault_point("registry.after_alias")
    event["state"] = "done"
    c.set_registered_model_tag(name, key, json.dumps(event))
    return event


def reconcile(name: str) -> list[dict[str, Any]]:
    """Settle champion changes a crash left ``pending``: done if the alias points at the event's target (the
    move happened), else aborted (it never did). Returns the events it settled. Call under :func:`registry_lock`."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        rm = c.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            return []
        raise
    champion = (rm.aliases or {}).get(CHAMPION)
    settled = []
    for key, value in (rm.tags or {}).items():
        if not key.startswith(EVENT_PREFIX):
            continue
        event = json.loads(value)
        if event.get("state") != "pending":
            continue
        moved = champion is not None and str(champion) == str(event["to_version"])
        event["state"] = "done" if moved else "aborted"
        event["settled"] = "after a crash: " + ("the alias had moved" if moved else "the alias never moved")
        if moved:
            c.set_model_version_tag(name, str(event["to_version"]), "lmops.promoted", "true")
        elif event["action"] == "promote (gate)":
            c.set_model_version_tag(name, str(event["to_version"]), "lmops.promoted", "false")
            c.set_model_version_tag(name, str(event["to_version"]), "lmops.registration", "crashed before the champion alias moved; re-run to gate it again")
        c.set_registered_model_tag(name, key, json.dumps(event))
        settled.append(event)
    return settled


def history(name: str, include_aborted: bool = False) -> list[dict[str, Any]]:
    """Champion changes, oldest first (pending records settled first, so a crash never hides a change)."""
    with registry_lock(name):
        reconcile(name)
    return _events(name, include_aborted)


def _events(name: str, include_aborted: bool = False) -> list[dict[str, Any]]:
    tags = client().get_registered_model(name).tags or {}
    events = [json.loads(tags[k]) for k in sorted((k for k in tags if k.startswith(EVENT_PREFIX)), key=lambda k: int(k[len(EVENT_PREFIX):]))]
    return [e for e in events if include_aborted or e.get("state", "done") == "done"]


def set_champion(name: str, version: str, action: str, reason: str, force: bool = False) -> dict[str, Any]:
    """Manual promotion: move ``champion`` to ``version`` and record it. A version that failed its gate is
    refused unless ``force`` (the override is written into the record)."""
    with registry_lock(name):
        reconcile(name)
        return _set_champion_locked(name, version, action, reason, force)


def _set_champion_locked(name: str, version: str, action: str, reason: str, force: bool) -> dict[str, Any]:
    if not reason.strip():
        raise UserError("a reason is required for manual registry actions: --reason TEXT")
    mv = get_version(name, str(version))
    if mv is None:
        raise UserError(f"{name} has no version {version}; see `lmops models list`")
    tags = dict(mv.tags or {})
    if tags.get("gate_promote") == "false" and action != "rollback":
        reasons = "; ".join(json.loads(tags.get("gate_reasons", "[]")))
        if not force:
            raise UserError(f"{name} v{version} failed its gate ({reasons}); promoting it could make a worse model champion. "
                            "Pass --force to override (the override is recorded with your reason)")
        reason = f"{reason} [override: v{version} failed its gate: {reasons}]"
    current = get_version(name, CHAMPION)
    current_v = str(current.version) if current else None
    return _move_champion(name, str(version), current_v, action, reason)


def rollback(name: str, reason: str) -> dict[str, Any]:
    """Put back the champion that the current one replaced (champion history is a stack). The target is
    computed under the same lock that moves the alias, so a promotion in between cannot be skipped."""
    with registry_lock(name):
        reconcile(name)
        current = get_version(name, CHAMPION)
        if current is None:
            raise UserError(f"{name} has no champion to roll back")
        stack: list[str] = []
        for event in _events(name):
            if event["action"] == "rollback":
                if stack:
                    stack.pop()
            elif event["from_version"]:
                stack.append(event["from_version"])
        if not stack:
            raise UserError(f"{name}@champion (v{current.version}) replaced no earlier champion; nothing to roll back to")
        return _set_champion_locked(name, stack[-1], "rollback", reason, force=True)


def run_params(run_id: str) -> dict[str, str]:
    return dict(client().get_run(run_id).data.params)


def compare(ref_a: str, ref_b: str) -> dict[str, Any]:
    a, b = show(ref_a), show(ref_b)
    pa, pb = run_params(a["run_id"]), run_params(b["run_id"])
    params = {k: [pa.get(k), pb.get(k)] for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    metrics = {k: [a["metrics"].get(k), b["metrics"].get(k)] for k in sorted(set(a["metrics"]) | set(b["metrics"]))}
    lineage = {k: [a.get(k), b.get(k)] for k in ("data_version", "params_hash", "git_commit", "flow_run_id", "promoted")}
    return {"a": f"{a['name']}@{a['version']}", "b": f"{b['name']}@{b['version']}", "metrics": metrics, "params_changed": params, "lineage": lineage}


REQUIRED_FILES = ("config.json", "model.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # soft-prompt versions: adapter + base reference


def missing_files(present: set[str]) -> list[str]:
    """What a registered model folder lacks (a soft-prompt version is an adapter that names its base)."""
    wanted = ADAPTER_FILES if "adapter_config.json" in present else REQUIRED_FILES
    return [f for f in wanted if f not in present]


def download_version(mv, dst: Path) -> Path:
    """A registered version's model folder, checked complete: a version whose artifacts are gone is a
    registry inconsistency (exit 5), named with the way out, not a crash deep in model loading."""
    from lmops.errors import RegistryError

    try:
        local = download_model(mv.source, dst)
    except Exception as exc:  # noqa: BLE001 - stores fail in many library-specific ways
        raise RegistryError(f"{mv.name} v{mv.version}: cannot download {mv.source}: {exc}; check with `lmops models verify {mv.name}`") from exc
    _require({p.name for p in local.iterdir()}, mv)
    return local


def require_artifacts(mv) -> None:
    """The same completeness check as :func:`download_version`, from the store's listing (nothing downloaded):
    a run with nothing new to train still notices a champion whose files are gone."""
    import mlflow

    from lmops.errors import RegistryError

    try:
        present = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=mv.source)}
    except Exception as exc:  # noqa: BLE001 - stores fail in many library-specific ways
        raise RegistryError(f"{mv.name} v{mv.version}: cannot list {mv.source}: {exc}; check with `lmops models verify {mv.name}`") from exc
    _require(present, mv)


def _require(present: set[str], mv) -> None:
    from lmops.errors import RegistryError

    missing = missing_files(present)
    if missing:
        raise RegistryError(f"{mv.name} v{mv.version} is registered but its artifacts lack {missing} ({mv.source}); "
                            f"`lmops models verify {mv.name}` lists every broken version; move the champion with `lmops rollback` "
                            "or `lmops promote`")


def verify(name: str | None = None) -> list[dict[str, Any]]:
    """Check every registered version's artifacts are present; returns one row per version."""
    import mlflow

    c = client()
    names = [name] if name else [m["name"] for m in list_models()]
    rows = []
    for n in names:
        for mv in sorted(c.search_model_versions(f"name='{n}'"), key=lambda v: int(v.version)):
            try:
                present = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=mv.source)}
            except Exception as exc:  # noqa: BLE001 - an unreachable store is a finding, not a crash
                present, error = set(), str(exc)
            else:
                error = None
            missing = missing_files(present)
            rows.append({"name": n, "version": int(mv.version), "ok": not missing and error is None, "missing": missing, "error": error, "source": mv.source})
    return rows
