"""A local control plane in one command: a real Prefect server (API, UI, scheduler, automations) and an MLflow
UI on 127.0.0.1, with their state under LMOPS_HOME/server. Idempotent: ``start`` keeps services that already
answer, ``stop`` stops only what it started.

While it runs, every lmops command on this machine talks to that Prefect server (``lmops.env.apply_defaults``
reads ``prefect.json`` here unless ``PREFECT_API_URL`` is set), so flow runs, schedules and artifacts land
in one UI instead of a throw-away embedded API. ``make run`` without it keeps the embedded default.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lmops.errors import TransientError, UserError

SERVICES = ("prefect", "mlflow")


def state_dir() -> Path:
    from lmops.env import lmops_home

    return lmops_home() / "server"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - refused, timed out, starting: all "not yet"
        return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _record(name: str) -> dict[str, Any] | None:
    path = state_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def status() -> dict[str, Any]:
    out = {}
    for name in SERVICES:
        rec = _record(name)
        if rec is None:
            out[name] = {"running": False}
            continue
        out[name] = {**rec, "running": _alive(rec["pid"]) and _healthy(rec["health"])}
    return out


def _command(name: str, port: int) -> tuple[list[str], dict[str, str], str, str]:
    from lmops.env import mlflow_artifact_root, mlflow_tracking_uri

    env = {**os.environ}
    if name == "prefect":
        home = state_dir() / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        # the server's own database, not the embedded API's; nothing phones home
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_URL=f"http://127.0.0.1:{port}")
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        return cmd, env, f"http://127.0.0.1:{port}/api/health", f"http://127.0.0.1:{port}"
    uri = mlflow_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", uri,
           "--default-artifact-root", mlflow_artifact_root(), "--workers", "1"]
    return cmd, env, f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}"


def start(prefect_port: int = 4200, mlflow_port: int = 5000, timeout_s: float = 180) -> dict[str, Any]:
    """Start what is not running, wait until each answers its health URL, and return :func:`status`."""
    state_dir().mkdir(parents=True, exist_ok=True)
    current = status()
    started = {}
    for name, port in (("prefect", prefect_port), ("mlflow", mlflow_port)):
        if current[name]["running"]:
            continue
        if not _port_free(port):
            raise UserError(f"port {port} on 127.0.0.1 is taken by another program; pick another with --{name}-port")
        cmd, env, health, url = _command(name, port)
        log = state_dir() / f"{name}.log"
        with open(log, "ab") as fh:
            # its own session: a Ctrl-C in this terminal does not reach it, `lmops server stop` does
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        rec = {"pid": proc.pid, "port": port, "url": url, "health": health, "log": str(log)}
        if name == "prefect":
            rec["api_url"] = f"{url}/api"
        started[name] = (proc, rec)
    deadline = time.time() + timeout_s
    for name, (proc, rec) in started.items():
        while not _healthy(rec["health"]):
            if proc.poll() is not None:
                raise TransientError(f"{name} server exited with code {proc.returncode} while starting; see {rec['log']}")
            if time.time() > deadline:
                raise TransientError(f"{name} server did not answer {rec['health']} within {timeout_s:.0f}s; see {rec['log']}")
            time.sleep(0.5)
        (state_dir() / f"{name}.json").write_text(json.dumps(rec))
    return status()


def stop(timeout_s: float = 30) -> dict[str, Any]:
    """Stop the services this control plane started (their whole process groups)."""
    for name in SERVICES:
        rec = _record(name)
        if rec is None:
            continue
        if _alive(rec["pid"]):
            try:
                os.killpg(rec["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + timeout_s
            while _alive(rec["pid"]) and time.time() < deadline:
                time.sleep(0.2)
            if _alive(rec["pid"]):
                os.killpg(rec["pid"], signal.SIGKILL)
        (state_dir() / f"{name}.json").unlink(missing_ok=True)
    return status()


class CommandAPI:
    """Prefect's throw-away API for one command (what Prefect itself starts when no PREFECT_API_URL is set: the
    same uvicorn app on the same local database), started by ``lmops run`` *before* its own imports instead of
    after them, so the two overlap: a run that finds nothing new finishes in seconds, not in the ~15 s of Prefect's
    own start-up (BENCHMARKS.md). The server dies with the command, also when the command is killed."""

    def __init__(self) -> None:
        import importlib.util
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        site = Path(importlib.util.find_spec("prefect").origin).parent.parent
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory", "prefect.server.api.server:create_app", "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        os.environ["PREFECT_API_URL"] = self.url
        # stopped at exit, after Prefect's own exit handlers (registered later, so run earlier) flush logs and events to it
        import atexit

        atexit.register(self.close)
        # one machine, one home: the file locks serialize; a lease on a server that dies with the command (and runs no
        # repossessor) would outlive a killed holder
        os.environ["LMOPS_SERVER_LEASES"] = "off"

    def ready(self, timeout_s: float = 180) -> None:
        deadline = time.time() + timeout_s
        while not _healthy(f"{self.url}/health"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise TransientError(f"the embedded Prefect API (port {self.port}) did not start (exit code {self.proc.poll()}); "
                                     "run the command again, or start a control plane with `lmops server start`")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a SIGKILLed run leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
