"""Prefect task wrappers around the stage functions (`tasks/stages.py`) plus the artifacts people look at in the UI.

Retries apply only to TransientError (a remote, a lock); user and data errors fail at once.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lmops.errors import TransientError
from lmops.faults import fault_point


def only_transient(task_obj, task_run, state) -> bool:
    try:
        state.result()
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False


def step(fn=None, *, retries: int = 0, name: str | None = None):
    """``@task`` with the project's defaults: no result persistence/caching of big local objects."""

    def wrap(f):
        @functools.wraps(f)
        def with_fault_point(*args, **kwargs):
            out = f(*args, **kwargs)
            fault_point(f"stage.{f.__name__}.done")  # the fault-injection tests' stage boundaries
            return out

        return task(
            with_fault_point, name=name or f.__name__, retries=retries, retry_delay_seconds=3, retry_condition_fn=only_transient if retries else None,
            persist_result=False, cache_policy=NO_CACHE, log_prints=True,
        )

    return wrap(fn) if fn else wrap


def deployment_params(params_file: str, overrides: list[str] | None, project_root: str, layers: list[str] | None):
    """(project root, Params) for a deployment entry point: params read where the flow runs, from ``params_file`` with
    ``layers`` (relative to the root) and ``overrides`` on top."""
    from lmops.config import load_params

    root = Path(project_root).resolve()
    return root, load_params(root / params_file, overrides=overrides, layers=[root / layer for layer in layers or []])


def png_markdown(path: str | Path, caption: str) -> str:
    """Inline a PNG so the Prefect UI shows it without a file server; the path is kept for humans."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{caption}](data:image/png;base64,{data})\n\n`{path}`\n"


def artifact(key: str, markdown: str, description: str) -> None:
    """A markdown artifact on the flow run (the Prefect UI's Artifacts tab)."""
    create_markdown_artifact(key=key, markdown=markdown, description=description)


EVENTS = {"promoted": "lmops.model.promoted", "not_promoted": "lmops.model.not-promoted", "data_rejected": "lmops.data.rejected",
          "failed": "lmops.run.failed", "no_change": "lmops.run.no-change", "spike": "lmops.monitor.spike", "drift": "lmops.monitor.drift"}


def emit(event: str, resource_id: str, labels: dict[str, str], payload: dict) -> None:
    """A Prefect event (automations and deployment triggers act on it); ``labels`` go on the resource, where a
    trigger's ``match`` can select them."""
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource_id, "prefect.resource.name": resource_id.split(".", 2)[-1], **labels},
               payload={k: v for k, v in payload.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))})


def notify(p, kind: str, payload: dict, resource: str | None = None, labels: dict[str, str] | None = None) -> None:
    """A ``lmops.<kind>`` Prefect event (automations can act on it) and, when ``notify.webhook_url`` is set and
    ``kind`` is in ``notify.events``, the same as a JSON POST to the webhook."""
    from lmops.tasks.notify import post

    event = EVENTS[kind]
    model = p.register_.model_name
    emit(event, resource or f"lmops.model.{model}", labels or {}, payload)
    if p.notify.webhook_url and kind in p.notify.events:
        post(p.notify.webhook_url, event, {"model": model, **payload}, p.notify.timeout_s)
