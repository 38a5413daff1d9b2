"""Data arrival flows: new files → validated → a new data version → ``lmops.data.version.created``.

``add_data`` (``lmops data add FILE...``) hands files in; ``landing`` (served by ``lmops serve`` every
``arrival.poll_s``) takes the settled files of the landing folder and hands them to ``add_data``. Nothing
trains here: the event does that, through the retraining deployment's trigger, on exactly the new version.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from lmops.config import Params, params_from_dict
from lmops.env import new_run_dir
from lmops.flows.pipeline import data_key, ingest, validate, version
from lmops.flows.steps import artifact, deployment_params, notify, step
from lmops.layout import RunLayout
from lmops.tasks import stages

VERSION_CREATED = "lmops.data.version.created"


@step
def intake(p: Params, run: RunLayout, root: Path, files: list[tuple[str, str]]):
    return stages.intake(p, run, root, [(Path(f), role) for f, role in files])


@step
def retrain_due(p: Params, root: Path, summary):
    return stages.retrain_due(p, root, summary)


def _report(run: RunLayout, taken: dict, summary, outcome: str, extra: str = "") -> str:
    rows = ""
    for b in taken["new"] if summary else []:
        c = summary.sources[f"batch-{b['id']}"]
        rows += f"| {b['file']} | `{b['id']}` | {b['role']} | {c.rows_in} | {c.kept} | {c.quarantined} | {c.duplicates} |\n"
    md = (f"# Data arrival: {outcome}\n\n| file | batch | role | rows in | kept | quarantined | duplicates |\n|---|---|---|---:|---:|---:|---:|\n"
          f"{rows}\nrows in = kept + quarantined + duplicates, per batch; quarantined rows with their reasons: "
          f"`{run.data.quarantine}`\n\n{extra}\n")
    run.root.mkdir(parents=True, exist_ok=True)
    (run.root / "arrival.md").write_text(md)
    artifact("data-arrival", md, "new data handed to lmops")
    return md


def _batch_counts(taken: dict, summary) -> dict[str, dict]:
    return {b["id"]: {"file": b["file"], "role": b["role"], **vars(summary.sources[f"batch-{b['id']}"])} for b in taken["new"]}


@flow(name="data-arrival", log_prints=True)
def add_data(params: dict[str, Any], project_root: str, files: list[tuple[str, str]]) -> dict[str, Any]:
    """Files ``[(path, role), ...]`` become batches of a new data version, validated by the Great Expectations suites
    before anything trains. A file whose bytes are already a batch adds nothing; a version failing validation is
    not made, and ``lmops.data.rejected`` (and the webhook) say why."""
    from lmops.errors import DataError
    from lmops.flows.steps import emit
    from lmops.tasks.locks import exclusive

    p, root, run = params_from_dict(params), Path(project_root).resolve(), RunLayout(new_run_dir("arrival"))
    with exclusive(data_key(root), p.register_.wait_for_other_run_s, what=f"{root}/data"):
        taken = intake(p, run, root, files)
        base = {"run_dir": str(run.root), "flow_run_id": str(runtime.flow_run.id or ""), "known": [b["id"] for b in taken["known"]]}
        if not taken["new"]:
            print("every file handed in is already a batch of the current data (same bytes): nothing to add")
            _report(run, taken, None, "nothing new", "Every file is already a batch of the current data version (same bytes).")
            result = {**base, "status": "known", "retrain": False, "reason": "already ingested (same content)"}
            (run.root / "arrival.json").write_text(json.dumps(result, indent=2))
            return result
        summary = ingest(p, run, root)
        try:
            validate(p, run, root)
        except DataError as exc:
            _report(run, taken, summary, "rejected", f"**Rejected**: {exc}\n\nThe current data version is unchanged.")
            result = {**base, "status": "rejected", "retrain": False, "reason": str(exc), "batches": _batch_counts(taken, summary),
                      "quarantine": str(run.data.quarantine)}
            (run.root / "arrival.json").write_text(json.dumps(result, indent=2, default=str))
            notify(p, "data_rejected", {k: v for k, v in result.items() if k != "known"})
            raise
        data = version(run, root)
    due = retrain_due(p, root, summary)
    counts = _batch_counts(taken, summary)
    result = {**base, "status": "added", "md5": data.md5, "batches": counts, **due,
              "rows_in": sum(c["rows_in"] for c in counts.values()), "kept": sum(c["kept"] for c in counts.values()),
              "quarantined": sum(c["quarantined"] for c in counts.values()), "duplicates": sum(c["duplicates"] for c in counts.values())}
    _report(run, taken, summary, f"new data version `{data.md5}`", due["reason"])
    (run.root / "arrival.json").write_text(json.dumps(result, indent=2, default=str))
    # the retraining deployment's trigger matches lmops.retrain=true on this resource (tasks of serve: flows/serve.py)
    emit(VERSION_CREATED, f"lmops.data.{p.register_.model_name}", {"lmops.retrain": str(due["retrain"]).lower()},
         {k: v for k, v in result.items() if k != "known"})
    return result


@flow(name="landing", log_prints=True)
def landing(params_file: str = "params.yaml", overrides: list[str] | None = None, project_root: str = ".",
            layers: list[str] | None = None) -> dict[str, Any]:
    """Take the settled files of the landing folder as one arrival; file them under ``accepted/`` or ``rejected/``."""
    from lmops.errors import DataError, UserError
    from lmops.tasks import arrival

    root, p = deployment_params(params_file, overrides, project_root, layers)
    where = arrival.landing_of(p.arrival, root)
    items = where.landed(p.arrival.settle_s)
    if not items:
        return {"status": "nothing landed"}
    print(f"taking {len(items)} landed file(s) from {where.where}: {', '.join(ref.rsplit('/', 1)[-1] for ref, _ in items)}")
    with tempfile.TemporaryDirectory(prefix="lmops-landed-") as work:
        files = where.fetch(items, Path(work))
        try:
            result = add_data(params=p.to_dict(), project_root=str(root), files=[(str(f), role) for f, role in files])
        except (DataError, UserError) as exc:  # not worth another look: the same bytes would fail again
            where.file_away(items, "rejected", str(exc))
            raise
    where.file_away(items, "accepted")
    return result
