"""The monitor flow: score new text with the champion → store → spikes and drift → dashboard
(the stage is ``lmops.tasks.monitor.run.monitor``; this file adds Prefect's artifacts and events).

- ``monitor``: ``lmops monitor score --input FILE|DIR`` (and ``lmops monitor dashboard`` with no input);
- ``monitor_inbox``: the deployment ``lmops serve`` runs every ``monitor.every_minutes``: the files settled in
  ``monitor.inbox_dir``, moved under ``done/`` once their documents are in the store.

Events: ``lmops.monitor.spike`` per new spike (resource ``lmops.monitor.<model>``, label ``lmops.entity``) and
``lmops.monitor.drift`` when drift starts for a version (label ``lmops.retrain: "true"``, which the retraining
deployment's trigger matches); both also go to ``notify.webhook_url``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from lmops.config import params_from_dict
from lmops.env import new_run_dir
from lmops.flows.steps import artifact, deployment_params, notify, png_markdown, step

DRIFT = "lmops.monitor.drift"


@step
def score_and_analyse(p, inputs: list[str], out_dir: Path) -> dict[str, Any]:
    from lmops.tasks.monitor.run import monitor as run_monitor

    return run_monitor(p, [Path(i) for i in inputs], out_dir, loaded=_LOADED)


_LOADED: dict = {}  # a served process keeps the models it read (keyed by version, so a new champion loads fresh)


def _markdown(out: dict[str, Any]) -> str:
    s = out["scoring"]
    lines = [f"# Monitor: {out['model']} v{out['version']} (alias `{out['alias']}`)", ""]
    if s:
        lines += [f"rows in {s['rows_in']} = scored {s['scored']} + quarantined {s['quarantined']} + duplicates {s['duplicates']}"
                  f" ({s['seconds']:.1f} s; quarantined rows with reasons: `{s['quarantine']}`)", ""]
    d = out["drift"]
    lines += [f"**Drift: {'YES' if d['drifted'] else 'no'}** — {d['verdict']}", "", "| check | value | threshold |", "|---|---:|---:|"]
    lines += [f"| {c['check']} | {c['value']} | {c['threshold']} |" for c in d["checks"]]
    lines += ["", f"**New spikes: {len(out['new_spikes'])}**", ""]
    if out["new_spikes"]:
        lines += ["| company | bucket (UTC) | z | mean | baseline | documents | model |", "|---|---|---:|---:|---:|---:|---|"]
        from datetime import datetime, timezone

        for x in out["new_spikes"]:
            when = datetime.fromtimestamp(x["bucket"], timezone.utc).strftime("%Y-%m-%d %H:%M")
            lines.append(f"| {x['entity']} | {when} | {x['z']:+.1f} | {x['mean']:+.3f} | {x['baseline']:+.3f} | {x['volume']} | v{x['versions']} |")
    lines += ["", f"Dashboard: `{out['dashboard']}`", ""]
    return "\n".join(lines)


@flow(name="monitor", log_prints=True)
def monitor(params: dict[str, Any], project_root: str, inputs: list[str] | None = None) -> dict[str, Any]:
    p = params_from_dict(params)
    run_dir = new_run_dir("monitor")
    out = score_and_analyse(p, list(inputs or []), run_dir)
    s = out["scoring"]
    if s:
        print(f"scored with {out['model']} v{out['version']}: rows_in {s['rows_in']} = scored {s['scored']} + quarantined "
              f"{s['quarantined']} + duplicates {s['duplicates']}")
    print(out["drift"]["verdict"])
    artifact("monitor", _markdown(out), f"monitor run: {out['model']} v{out['version']}")
    artifact("monitor-sentiment", png_markdown(out["plot"], "sentiment per company, spikes circled"), "sentiment per company over time")
    model = out["model"]
    for x in out["new_spikes"]:
        notify(p, "spike", {**x, "model": model, "version": out["version"], "dashboard": out["dashboard"]},
               resource=f"lmops.monitor.{model}", labels={"lmops.entity": x["entity"]})
    if out["drift_new"]:
        notify(p, "drift", {**out["drift"], "model": model, "dashboard": out["dashboard"]}, resource=f"lmops.monitor.{model}",
               labels={"lmops.retrain": str(p.monitor.retrain_on_drift).lower()})
    return out


@flow(name="monitor-inbox", log_prints=True)
def monitor_inbox(params_file: str = "params.yaml", overrides: list[str] | None = None, project_root: str = ".",
                  layers: list[str] | None = None) -> dict[str, Any]:
    """Deployment entry point: score what settled in ``monitor.inbox_dir`` (nothing there: nothing to do)."""
    from lmops.errors import UserError
    from lmops.tasks.monitor.inputs import check_columns
    from lmops.tasks.monitor.run import file_done, inbox_files

    root, p = deployment_params(params_file, overrides, project_root, layers)
    files = []
    for f in inbox_files(p, root):
        try:
            check_columns(f, p.monitor)
            files.append(f)
        except UserError as exc:  # not worth another look every few minutes: filed away with the reason
            (f.parent / "rejected").mkdir(exist_ok=True)
            f.replace(f.parent / "rejected" / f.name)
            (f.parent / "rejected" / f"{f.name}.reason.txt").write_text(f"{exc}\n")
            print(f"rejected {f.name}: {exc}")
    if not files:  # nothing new: spikes and drift cannot have changed (and before the first champion there is nothing to score with)
        return {"status": "nothing to score", "inbox": str(root / p.monitor.inbox_dir)}
    print(f"scoring {len(files)} file(s) from {files[0].parent}: {', '.join(f.name for f in files)}")
    out = monitor(params=p.to_dict(), project_root=str(root), inputs=[str(f) for f in files])
    file_done(files, p, root)
    return out
