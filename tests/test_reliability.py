"""Reliability: crashes between writes that must not split, concurrent writers, and manual overrides.

Crashes are real: ``LMOPS_FAULT=<point>`` makes the process SIGKILL itself at that point (``lmops/faults.py``).
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmops.errors import UserError
from lmops.tasks import registry
from tests.conftest import REPO
from tests.registry_helpers import fake_version, raced, start_race


def _killed_at(point: str, script: str, lmops_home: Path) -> None:
    code = textwrap.dedent(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n") + textwrap.dedent(script)
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LMOPS_HOME": str(lmops_home), "LMOPS_FAULT": point},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, f"expected SIGKILL at {point}, got {r.returncode}: {r.stderr[-2000:]}"


@pytest.mark.parametrize("point,moved", [pytest.param("registry.before_alias", False, marks=pytest.mark.slow), ("registry.after_alias", True)])
def test_a_champion_change_killed_midway_is_recorded_or_undone(lmops_home, tmp_path, point, moved):
    """The alias and its history record are one step: killed between them, the next registry action settles
    the record from the alias, so history and champion agree and rollback goes to the right version."""
    fake_version(tmp_path / "1", True, None)
    _killed_at(point, f"""
        import pathlib
        from tests.registry_helpers import fake_version
        fake_version(pathlib.Path({str(tmp_path / '2')!r}), True, "1")
    """, lmops_home)
    champion = registry.show("m@champion")["version"]
    events = registry.history("m")
    assert champion == (2 if moved else 1)
    assert [(e["from_version"], e["to_version"]) for e in events] == [(None, "1")] + ([("1", "2")] if moved else [])
    assert registry.show("m@2")["promoted"] is moved
    if moved:
        assert "after a crash" in events[-1]["settled"]
        registry.rollback("m", "killed promotion")
        assert registry.show("m@champion")["version"] == 1
    else:
        aborted = [e for e in registry.history("m", include_aborted=True) if e["state"] == "aborted"]
        assert [e["to_version"] for e in aborted] == ["2"]


def test_a_manual_promotion_killed_after_the_alias_is_recorded(lmops_home, tmp_path):
    fake_version(tmp_path / "1", True, None)
    fake_version(tmp_path / "2", False, "1")
    _killed_at("registry.after_alias", """
        from lmops.tasks import registry
        registry.set_champion("m", "2", "promote (manual)", "approved")
    """, lmops_home)
    assert [(e["action"], e["to_version"]) for e in registry.history("m")] == [("promote (gate)", "1"), ("promote (manual)", "2")]


def test_promote_refuses_a_version_that_failed_its_gate_unless_forced(lmops_home, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    fake_version(tmp_path / "1", True, None)
    run_id, source = registry.log_candidate("exp", "r", {}, {"macro_f1": 0.4}, {}, {"model": d})
    registry.register_version("m", run_id, source, {"gate_promote": "false", "gate_reasons": '["macro_f1 0.40 < champion 0.50"]'}, False, "1")
    with pytest.raises(UserError, match="failed its gate.*--force"):
        registry.set_champion("m", "2", "promote (manual)", "looks fine")
    assert registry.show("m@champion")["version"] == 1
    event = registry.set_champion("m", "2", "promote (manual)", "risk signed off", force=True)
    assert "override" in event["reason"] and "macro_f1 0.40 < champion 0.50" in event["reason"]
    # rolling back to a version is always allowed: it was the champion before
    registry.rollback("m", "override reverted")
    assert registry.show("m@champion")["version"] == 1


def _snapshot_dir(path: Path, n: int) -> Path:
    import pandas as pd

    path.mkdir(parents=True)
    pd.DataFrame({"id": [f"s:{i}" for i in range(n)], "text": [f"row {i} of {n}" for i in range(n)]}).to_parquet(path / "train.parquet")
    return path


def test_concurrent_versioning_records_each_runs_own_data(lmops_home, tmp_path):
    """Two processes version different snapshots into one checkout at the same moment: each records the md5
    of its own data, and data/ ends up matching data.dvc (the lock spans swap, dvc add, push and the read)."""
    import json

    from lmops.tasks.version import snapshot

    expected = {}
    for n in (50, 60):
        ref = tmp_path / f"ref{n}"
        ref.mkdir()
        expected[n] = snapshot(ref, _snapshot_dir(tmp_path / f"in{n}", n), tmp_path / "ref-remote").md5
    root = tmp_path / "repo"
    root.mkdir()
    script = textwrap.dedent(f"""
        import json, pathlib, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lmops.tasks.version import snapshot
        n, go = int(sys.argv[1]), pathlib.Path(sys.argv[2])
        while not go.exists():
            time.sleep(0.01)
        v = snapshot(pathlib.Path({str(root)!r}), pathlib.Path({str(tmp_path)!r}) / f"in{{n}}", pathlib.Path({str(tmp_path / 'remote')!r}))
        print(json.dumps([n, v.md5]))
    """)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LMOPS_HOME": str(lmops_home)}) for n in (50, 60)]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    recorded = dict(json.loads(o[0].strip().splitlines()[-1]) for o in outs)
    assert recorded == expected
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "data.dvc"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0 and ("up to date" in status.stdout.lower() or "in sync" in status.stdout or not status.stdout.strip()), status.stdout


@pytest.mark.parametrize("point", ["version.swap", "version.added"])
def test_a_versioning_killed_midway_is_repaired_by_the_next_one(lmops_home, tmp_path, point):
    """SIGKILL after data/ was moved aside, or after dvc add but before the push: the next version of the
    same checkout completes, data/ agrees with data.dvc and the remote holds what data.dvc names."""
    from lmops.tasks.version import read_data_version, snapshot

    root = tmp_path / "repo"
    root.mkdir()
    remote = tmp_path / "remote"
    first = snapshot(root, _snapshot_dir(tmp_path / "a", 40), remote)
    _snapshot_dir(tmp_path / "b", 45)
    _killed_at(point, f"""
        import pathlib
        from lmops.tasks.version import snapshot
        snapshot(pathlib.Path({str(root)!r}), pathlib.Path({str(tmp_path / 'b')!r}), pathlib.Path({str(remote)!r}))
    """, lmops_home)
    # killed between the two renames, the old data/ waits in .data.old; the next writer puts it back first
    assert (root / "data").is_dir() or (root / ".data.old").is_dir()
    again = snapshot(root, tmp_path / "b", remote)
    assert again.md5 != first.md5 and read_data_version(root / "data.dvc") == again.md5
    assert not list(root.glob(".data.staging*")) and not (root / ".data.old").exists()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "data.dvc"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0 and ("up to date" in status.stdout.lower() or "in sync" in status.stdout or not status.stdout.strip()), status.stdout


def test_a_checkpoint_folder_has_one_owner(tmp_path):
    """Two runs with the same pretraining key: the second waits for the first instead of pruning its
    checkpoints, and a bounded wait names the holder."""
    from lmops.errors import TransientError
    from lmops.tasks.checkpoints import claim

    ckpt = tmp_path / "pretrain-abc"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lmops.tasks.checkpoints import claim
        with claim(pathlib.Path({str(ckpt)!r})):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TransientError, match=rf"held for over 0s by pid {holder.pid} on "):
            with claim(ckpt, timeout_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim(ckpt, timeout_s=5):  # released when its owner dies (an OS file lock)
        pass


def _api_env(lmops_home: Path) -> dict:
    from prefect.settings import PREFECT_API_URL

    return {"LMOPS_HOME": str(lmops_home), "PREFECT_API_URL": PREFECT_API_URL.value()}


def _consistent(project: Path, lmops_home: Path) -> dict:
    """What must hold after any crash and re-run: every registered version complete, the champion's last
    change recorded, data/ agreeing with data.dvc and the remote, and the champion trained on data.dvc's data."""
    from tests.conftest import run_cli

    env = _api_env(lmops_home)
    verify = run_cli("models", "verify", "--json", cwd=project, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    champion = registry.show("finance-sentiment@champion")
    events = registry.history("finance-sentiment")
    assert events and events[-1]["to_version"] == str(champion["version"])
    promoted = {str(v["version"]) for v in (registry.show(f"finance-sentiment@{n}") for n in range(1, champion["version"] + 5)
                                               if registry.get_version("finance-sentiment", str(n))) if v["promoted"]}
    assert promoted <= {e["to_version"] for e in events}, "a version marked promoted has no history record"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud"], cwd=project, capture_output=True, text=True)
    assert status.returncode == 0 and "in sync" in status.stdout, status.stdout + status.stderr
    from lmops.tasks.version import read_data_version

    assert champion["data_version"] == read_data_version(project / "data.dvc")
    # one record per promotion decision, and no champion change ever to a worse model
    assert len(events) == len(promoted)
    scores = [registry.show(f"finance-sentiment@{e['to_version']}")["metrics"]["macro_f1"] for e in events]
    assert scores == sorted(scores), f"a champion change went to a worse model: {scores}"
    return champion


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("point", ["stage.ingest.done", "version.swap", "version.added", "stage.pretrain.done",
                                   "stage.finetune.done", "stage.gate.done", "registry.before_alias", "registry.after_alias"])
def test_a_pipeline_killed_at_each_fault_point_recovers_on_rerun(prefect_api, project, lmops_home, point):
    """SIGKILL at a stage boundary or between two writes that must not split; the same command re-run completes
    and leaves data, lineage and registry consistent, with exactly one champion."""
    from tests.conftest import run_cli

    # One LMOPS_HOME: the file locks serialize; the harness's ephemeral server never revokes a killed run's lease.
    env = {**_api_env(lmops_home), "LMOPS_SERVER_LEASES": "off"}
    killed = run_cli("run", cwd=project, env={**env, "LMOPS_FAULT": point})
    assert killed.returncode == -9, killed.stderr[-3000:]
    again = run_cli("run", cwd=project, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    _consistent(project, lmops_home)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("checkouts", [1, 2])
def test_two_pipelines_started_together_make_one_consistent_champion(prefect_api, project, lmops_home, checkouts):
    """Two `lmops run` at the same moment, on one checkout (sharing data/ and data.dvc) or on two checkouts
    sharing one registry: both complete, every champion change is recorded and none goes to a worse model."""
    import shutil

    roots = [project]
    if checkouts == 2:
        shutil.copytree(project, project.parent / "proj2")
        roots.append(project.parent / "proj2")
    # the same data, two fine-tuning settings: two models (the same command twice would be "no change" the second time)
    procs = [subprocess.Popen([sys.executable, "-m", "lmops.cli", "run", f"finetune.lr={2e-3 / (i + 1)}"], cwd=roots[i % len(roots)],
                              env={**os.environ, **_api_env(lmops_home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    for root in roots:
        _consistent(root, lmops_home)
    # one training of a model name at a time: the second run held the training lock only after the first let it go
    summaries = [json.loads((run / "run.json").read_text()) for run in (lmops_home / "runs").iterdir()]
    spans = sorted((s["training_lock"]["held_from"], s["training_lock"]["held_to"]) for s in summaries)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans
    assert len(registry.list_models()[0:1]) == 1 and registry.list_models()[0]["versions"] == 2


def test_pruning_keeps_the_newest_the_recent_and_what_the_registry_points_to(lmops_home, tmp_path):
    import json
    import time

    from tests.conftest import run_cli

    runs = lmops_home / "runs"
    old = time.time() - 30 * 86400
    for i in range(5):
        d = runs / f"2026010{i}-run"
        (d / "finetune" / "model").mkdir(parents=True)
        (d / "finetune" / "model" / "model.safetensors").write_bytes(b"w" * 1000)
        os.utime(d, (old + i, old + i))
    champion_run = runs / "20260100-run"
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"x")
    run_id, source = registry.log_candidate("exp", "r", {}, {"macro_f1": 0.5}, {}, {"model": m})
    registry.register_version("m", run_id, source, {"run_dir": str(champion_run)}, True, None)
    fresh = runs / "20261129-running"
    fresh.mkdir()
    env = {"LMOPS_HOME": str(lmops_home)}
    dry = json.loads(run_cli("runs", "prune", "--keep", "2", "--dry-run", "--json", cwd=tmp_path, env=env).stdout.splitlines()[-1])
    assert sorted(dry["removed"]) == ["20260101-run", "20260102-run", "20260103-run"] and len(list(runs.iterdir())) == 6
    r = run_cli("runs", "prune", "--keep", "2", "--json", cwd=tmp_path, env=env)
    out = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 0 and out["freed_bytes"] >= 3000
    assert sorted(p.name for p in runs.iterdir()) == ["20260100-run", "20260104-run", "20261129-running"]
    assert out["kept"]["20260100-run"] == "registry: m v1 (champion)"


def test_the_team_stack_is_not_open_to_the_network():
    """Every published port binds to loopback, no credential is written in the compose file (each comes from
    infra/.env, which git ignores), and the Prefect API requires an auth string."""
    import re

    import yaml

    text = (REPO / "infra" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        env = svc.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|AUTH_STRING", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
    for url in re.findall(r"postgres(?:ql)?(?:\+asyncpg)?://\S+", text):
        assert "${POSTGRES_PASSWORD" in url, url
    assert "PREFECT_SERVER_API_AUTH_STRING" in compose["services"]["prefect-server"]["environment"]
    assert "/infra/.env" in (REPO / ".gitignore").read_text().splitlines()
    example = dict(line.split("=", 1) for line in (REPO / "infra" / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert set(example) == set(re.findall(r"\$\{(\w+):\?", text))


def test_team_workers_keep_their_state_between_runs():
    """A flow run's container or pod is gone when it ends: LMOPS_HOME (checkpoints, stage cache, run folders) is
    on a volume in the compose worker and on a persistent volume claim in the Kubernetes job template."""
    import yaml

    worker = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())["services"]["prefect-worker"]
    home = worker["environment"]["LMOPS_HOME"]
    assert any(v.split(":")[1] == home and not v.startswith(("/", ".")) for v in worker["volumes"]), worker["volumes"]
    job = json.loads((REPO / "infra" / "k8s" / "work-pool-job-template.json").read_text())
    home = job["variables"]["properties"]["env"]["default"]["LMOPS_HOME"]
    pod = job["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert [n for n, path in mounts.items() if path == home and n in claims], (mounts, claims)


def _race_across_homes(tmp_path: Path, mlflow_db: Path, lease: bool) -> list[str]:
    """Two processes with separate LMOPS_HOMEs (two machines: separate file locks) share one registry and one
    Prefect server, and race to register a gated version against 'no champion' (tests.registry_helpers.race_child)."""
    import shutil

    from prefect.settings import PREFECT_API_URL

    from tests.registry_helpers import start_race

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(mlflow_db, shared / "mlflow.db")
    dirs = [tmp_path / f"machine{i}" for i in range(2)]
    # the registry's own lock off: this is the Prefect lease's test (the registry lock has its own below)
    envs = [{"LMOPS_HOME": str(d / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{shared / 'mlflow.db'}", "PREFECT_API_URL": PREFECT_API_URL.value(),
             "LMOPS_REGISTRY_LOCKS": "off"} for d in dirs]
    return start_race(dirs, "" if lease else "lease", "shared", envs)


@pytest.mark.slow
@pytest.mark.integration
def test_two_machines_sharing_a_registry_cannot_both_become_champion(prefect_api, _empty_mlflow_db, tmp_path):
    """With a Prefect server configured, the registry lock is also a lease on that server, so workers with
    separate LMOPS_HOMEs (separate file locks) still change the champion one at a time. (Slow tier: it starts a
    Prefect API; the default run keeps the one-home race in test_audit and the lock unit tests here.)"""
    assert _race_across_homes(tmp_path, _empty_mlflow_db, lease=True) == ["False", "True"]


@pytest.mark.slow
@pytest.mark.integration
def test_without_the_lease_two_machines_both_promote(prefect_api, _empty_mlflow_db, tmp_path):
    """The test above can fail: the same race with the lease taken away promotes both."""
    assert raced(_race_across_homes(tmp_path, _empty_mlflow_db, lease=False))


def _race_on_a_shared_registry(tmp_path: Path, tracking_uri: str, unguarded: str) -> list[str]:
    """Two machines (separate LMOPS_HOMEs) that share nothing but an MLflow registry, no Prefect server."""
    dirs = [tmp_path / f"machine{i}" for i in range(2)]
    envs = [{"LMOPS_HOME": str(d / "home"), "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": ""} for d in dirs]
    return start_race(dirs, unguarded, "shared", envs)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("unguarded,promoted", [("", ["False", "True"]), ("mutex", "raced")])
def test_machines_sharing_only_an_mlflow_server_change_the_champion_one_at_a_time(tmp_path, unguarded, promoted):
    """No Prefect server: the registry lock is a lock in the registry itself (a real `mlflow server`), so two
    machines cannot both become champion; with that lock taken away the same race promotes both (the test can fail)."""
    with mlflow_server(tmp_path) as uri:
        outcome = _race_on_a_shared_registry(tmp_path, uri, unguarded)
        assert raced(outcome) if promoted == "raced" else outcome == promoted, outcome
        from mlflow.tracking import MlflowClient

        assert not [m.name for m in MlflowClient(uri, uri).search_registered_models() if m.name.startswith("lmops-lock.registry-shared")
                    and ".stale." not in m.name], "a released lock was left behind"


@contextlib.contextmanager
def mlflow_server(tmp_path: Path):
    from tests.test_team_stack import _free_port, _wait_healthy

    port = _free_port()
    log = tmp_path / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{tmp_path / 'registry.db'}", "--artifacts-destination",
                                 str(tmp_path / "artifacts"), "--serve-artifacts"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def shared_registry(lmops_home, monkeypatch):
    """The registry as machines share it: MLFLOW_TRACKING_URI set (here the same SQLite file), no Prefect server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{lmops_home / 'mlflow' / 'mlflow.db'}")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return registry.client()


def test_a_lock_in_a_shared_registry_has_one_holder_and_names_it(shared_registry):
    from lmops.errors import TransientError
    from lmops.tasks.locks import RegistryMutex

    a, b = RegistryMutex(shared_registry, "registry-m"), RegistryMutex(shared_registry, "registry-m", poll_s=0.05)
    a.acquire(1, "the registry")
    try:
        with pytest.raises(TransientError, match=r"lmops-lock.registry-m.* held for over 0s by pid \d+ on "):
            b.acquire(0.2, "the registry")
        assert registry.list_models() == []  # a lock is not a model
    finally:
        a.release()
    b.acquire(1, "the registry")  # released: the next one gets it at once
    b.release()
    assert shared_registry.search_registered_models() == []


def test_a_dead_holders_lock_in_a_shared_registry_is_taken_over_by_one_waiter(shared_registry):
    """A holder that stops renewing (SIGKILL) loses the lock after its lease; of the waiters that see it dead,
    exactly one removes it, and the other waits for the new holder."""
    import threading

    from lmops.tasks.locks import RegistryMutex

    dead = RegistryMutex(shared_registry, "registry-m", lease_s=0.4)
    assert dead.try_acquire()[0]  # acquired, never renewed nor released: a killed holder
    waiters = [RegistryMutex(shared_registry, "registry-m", lease_s=30, poll_s=0.05) for _ in range(3)]
    held, order = threading.Barrier(3), []

    def contend(m):
        held.wait()
        m.acquire(20, "the registry")
        order.append(m.token)
        __import__("time").sleep(0.3)  # inside the section: nobody else may be
        order.append(m.token)
        m.release()

    threads = [threading.Thread(target=contend, args=(m,)) for m in waiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(order) == 6 and all(order[i] == order[i + 1] for i in range(0, 6, 2)), order  # one at a time
    stale = [m.name for m in shared_registry.search_registered_models()]
    assert stale == [f"lmops-lock.registry-m.stale.{dead.token}"], stale  # the dead one removed once, kept as the fence


def test_a_second_training_of_the_same_model_waits_then_fails_as_transient(lmops_home):
    """`register.wait_for_other_run_s` bounds the wait; the error names what is held."""
    from lmops.errors import TransientError
    from lmops.tasks.locks import exclusive

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lmops.tasks.locks import exclusive
        with exclusive("train-m", 5, what="training m"):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "LMOPS_HOME": str(lmops_home)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TransientError, match="training m .* held for over 0s by another run"):
            with exclusive("train-m", 0.3, what="training m"):
                pass
        with exclusive("train-other", 0.3, what="training other"):  # another model name is not blocked
            pass
    finally:
        holder.kill()
        holder.wait()


def test_an_unreachable_webhook_is_logged_not_raised(caplog):
    """A chat server that is down must not fail, or hide the result of, a training run."""
    from lmops.tasks.notify import post

    with socket_closed_port() as port:
        assert post(f"http://127.0.0.1:{port}/hook", "lmops.model.promoted", {"version": 1}, timeout_s=2) is False
    assert "notification lmops.model.promoted" in caplog.text


def socket_closed_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield port  # bound then released: nothing listens there

    return closed()
