"""``lmops serve``: the deployments of an unattended setup, served from one process (a Prefect runner).

- ``lmops-scheduled/<name>``: the pipeline on the ``schedule`` section's cron and time zone;
- ``lmops-scheduled/<name>-on-new-data``: the pipeline on exactly the data version a
  ``lmops.data.version.created`` event names, when that event says retraining is due (``arrival.min_new_rows``);
- ``landing/<name>-landing``: takes the settled files of the landing folder as new data (``flows/arrival.py``);
- ``monitor-inbox/<name>-monitor``: every ``monitor.every_minutes``, the champion scores the files in
  ``monitor.inbox_dir`` (``flows/monitor.py``);
- ``lmops-scheduled/<name>-on-drift``: the pipeline when the monitor's ``lmops.monitor.drift`` event says retrain
  (``monitor.retrain_on_drift``).

The landing folder is watched by a thread of this process (a directory listing every ``arrival.poll_s``),
which starts the landing deployment only when there is something to take: no flow run, and no Python
process, every few seconds for an empty folder.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from lmops.config import Params


def serve(params: Params, root: Path, name: str, cron: str, layers: list[str], overrides: list[str]) -> None:
    from prefect import serve as prefect_serve
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events import DeploymentEventTrigger

    from lmops.flows.arrival import VERSION_CREATED, landing
    from lmops.flows.monitor import DRIFT, monitor_inbox
    from lmops.flows.pipeline import scheduled
    from lmops.tasks.arrival import FolderLanding, landing_of

    common = {"params_file": "params.yaml", "layers": layers, "overrides": overrides, "project_root": str(root)}
    where = landing_of(params.arrival, root)
    if isinstance(where, FolderLanding):
        for role in ("labeled", "unlabeled"):
            (where.folder / role).mkdir(parents=True, exist_ok=True)
    model = params.register_.model_name
    on_data = DeploymentEventTrigger(
        name=f"retrain {model} on new data", expect={VERSION_CREATED},
        match={"prefect.resource.id": f"lmops.data.{model}", "lmops.retrain": "true"},
        parameters={**common, "data_version": "{{ event.payload.md5 }}"})
    on_drift = DeploymentEventTrigger(
        name=f"retrain {model} on drift", expect={DRIFT}, match={"prefect.resource.id": f"lmops.monitor.{model}", "lmops.retrain": "true"},
        parameters=common)
    (root / params.monitor.inbox_dir).mkdir(parents=True, exist_ok=True)
    deployments = [
        scheduled.to_deployment(name=name, schedules=[CronSchedule(cron=cron, timezone=params.schedule.timezone)], parameters=common),
        scheduled.to_deployment(name=f"{name}-on-new-data", triggers=[on_data], parameters=common),
        scheduled.to_deployment(name=f"{name}-on-drift", triggers=[on_drift], parameters=common),
        landing.to_deployment(name=f"{name}-landing", parameters=common),
        monitor_inbox.to_deployment(name=f"{name}-monitor", interval=timedelta(minutes=params.monitor.every_minutes), parameters=common),
    ]
    print("serving, with params.yaml" + "".join(f" + {layer}" for layer in layers) + "".join(f" {o}" for o in overrides) + ":\n"
          f"  lmops-scheduled/{name}: cron {cron!r} ({params.schedule.timezone})\n"
          f"  lmops-scheduled/{name}-on-new-data: on {VERSION_CREATED} when retraining is due (arrival.min_new_rows)\n"
          f"  landing/{name}-landing: files settled {params.arrival.settle_s:g} s in {where.where}/labeled/ and .../unlabeled/, "
          f"looked for every {params.arrival.poll_s} s\n"
          f"  monitor-inbox/{name}-monitor: every {params.monitor.every_minutes} min, scores the files in {root / params.monitor.inbox_dir}\n"
          f"  lmops-scheduled/{name}-on-drift: on {DRIFT} (monitor.retrain_on_drift: {str(params.monitor.retrain_on_drift).lower()})", flush=True)
    threading.Thread(target=_watch, args=(where, params.arrival.settle_s, params.arrival.poll_s, f"landing/{name}-landing"),
                     name="lmops-landing-watch", daemon=True).start()
    prefect_serve(*deployments, print_starting_message=False)


def _watch(where, settle_s: float, poll_s: float, deployment: str) -> None:
    """Start the landing deployment when settled files wait and no landing run is in flight."""
    from prefect.deployments import run_deployment

    last = None
    while True:
        time.sleep(poll_s)
        try:
            if not where.landed(settle_s) or (last is not None and not _finished(last)):
                continue
            last = run_deployment(name=deployment, timeout=0).id
            print(f"files landed in {where.where}: started {deployment} (flow run {last})", flush=True)
        except Exception as exc:  # noqa: BLE001 - the deployment may not be registered yet; look again next time
            print(f"landing watch: {type(exc).__name__}: {exc}", flush=True)


def _finished(flow_run_id) -> bool:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is None or state.is_final()
