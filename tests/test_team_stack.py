"""The team stack of infra/docker-compose.yml, run natively (no Docker daemon here): PostgreSQL from Debian's
packages, a Prefect server on it, an MLflow tracking server on it with artifacts in an S3-compatible store
(moto's server), the DVC remote on that store, and one `lmops run` through all of it."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.test_control_plane import _free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
CREDS = {"AWS_ACCESS_KEY_ID": "lmops-test", "AWS_SECRET_ACCESS_KEY": "lmops-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not _healthy(url):
        assert proc.poll() is None, f"{url}: exited {proc.returncode}\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"{url} did not answer within {timeout:.0f} s\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture
def postgres():
    """A PostgreSQL cluster on a free port (run as the postgres user when the tests run as root, in a folder that
    user can reach: pytest's own tmp folders are private to root)."""
    import tempfile

    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 server binaries are missing: apt-get install postgresql-15")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    top = Path(tempfile.mkdtemp(prefix="lmops-pg-"))
    os.chmod(top, 0o755)
    data = top / "pg"
    data.mkdir()
    if as_pg:
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "lmops", "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        for db in ("prefect", "mlflow", "monitor"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "lmops", "-d", "postgres", "-c", f"CREATE DATABASE {db}"],
                           check=True, capture_output=True)
        yield port
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def test_one_pipeline_run_through_prefect_and_mlflow_on_postgres_with_s3_artifacts_and_dvc_remote(postgres, project, lmops_home, tmp_path):
    import boto3

    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, cmd: list[str], env: dict, health: str) -> None:
        log = logs / f"{name}.log"
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        _wait_healthy(health, proc, log)

    s3_port, prefect_port, mlflow_port = _free_port(), _free_port(), _free_port()
    s3 = f"http://127.0.0.1:{s3_port}"
    try:
        start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], CREDS, f"{s3}/moto-api/")
        client = boto3.client("s3", endpoint_url=s3, **{k.lower(): v for k, v in CREDS.items() if k != "AWS_DEFAULT_REGION"},
                              region_name="us-east-1")
        for bucket in ("lmops-mlflow", "lmops-data"):
            client.create_bucket(Bucket=bucket)
        start("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
              {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://lmops@127.0.0.1:{postgres}/prefect"},
              f"http://127.0.0.1:{prefect_port}/api/health")
        start("mlflow", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                         "--backend-store-uri", f"postgresql://lmops@127.0.0.1:{postgres}/mlflow",
                         "--artifacts-destination", "s3://lmops-mlflow", "--serve-artifacts"],
              {**CREDS, "MLFLOW_S3_ENDPOINT_URL": s3}, f"http://127.0.0.1:{mlflow_port}/health")

        # the work pools (infra/work-pools.sh) and `prefect deploy --all` of infra/prefect.yaml against this server:
        # six deployments and the automations behind the data and drift triggers
        repo = Path(__file__).resolve().parent.parent
        api_env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT": f"{sys.executable} -m prefect",
                   "LMOPS_GIT_URL": str(repo)}
        pools = subprocess.run(["bash", "infra/work-pools.sh"], cwd=repo, env=api_env, capture_output=True, text=True, timeout=300)
        assert pools.returncode == 0, pools.stdout[-2000:] + pools.stderr[-2000:]
        deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
                                  cwd=repo, env=api_env, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_env["PREFECT_API_URL"]}), get_client(sync_client=True) as pc:
            names = {(d.name, d.work_pool_name) for d in pc.read_deployments()}
            assert names == {("nightly", "lmops-process"), ("retrain-on-new-data", "lmops-docker"), ("landing", "lmops-process"),
                             ("monitor", "lmops-process"), ("retrain-on-drift", "lmops-docker"), ("gpu", "lmops-k8s")}, names
            k8s = pc.read_work_pool("lmops-k8s").base_job_template["job_configuration"]["job_manifest"]["spec"]
            assert k8s["template"]["spec"]["containers"][0]["name"] == "prefect-job"
            triggers = [a for a in pc.read_automations() if "lmops.data.version.created" in str(a.trigger)]
            assert len(triggers) == 1
            assert len([a for a in pc.read_automations() if "lmops.monitor.drift" in str(a.trigger)]) == 1

        # the project's DVC remote on the object store (what `dvc remote add -d storage s3://…` does for a team)
        env = {"LMOPS_HOME": str(lmops_home), "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", **CREDS}
        for cmd in (["init"], ["remote", "add", "-d", "storage", "s3://lmops-data/dvc"],
                    ["remote", "modify", "storage", "endpointurl", s3]):
            subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=project, check=True, capture_output=True, env={**os.environ, **env})

        r = run_cli("run", "--json", cwd=project, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
        summary = json.loads(r.stdout.splitlines()[-1])
        assert summary["promoted"] and summary["model"]["version"] == 1

        # the registry is the MLflow server (on Postgres), its artifacts in the bucket
        shown = json.loads(run_cli("models", "show", "finance-sentiment@champion", "--json", cwd=project, env=env).stdout.splitlines()[-1])
        assert shown["version"] == 1 and shown["data_version"] == summary["data_version"]
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="lmops-mlflow").get("Contents", [])]
        assert any(k.endswith("model.safetensors") for k in keys), keys[:20]
        assert run_cli("models", "verify", cwd=project, env=env).returncode == 0
        # the data version is in the DVC remote on the object store
        data_keys = [o["Key"] for o in client.list_objects_v2(Bucket="lmops-data").get("Contents", [])]
        assert any(k.endswith(summary["data_version"][2:]) for k in data_keys), data_keys[:20]
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud"], cwd=project, capture_output=True, text=True,
                                env={**os.environ, **env})
        assert "in sync" in status.stdout, status.stdout + status.stderr
        # the flow run is recorded by the Prefect server (on Postgres)
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as pc:
            assert pc.read_flow_run(summary["flow_run_id"]).state.type.value == "COMPLETED"
        # the monitor's store on the team's PostgreSQL: the champion (and its drift reference) from the MLflow server
        import pandas as pd
        import psycopg

        heads = pd.read_csv(FIXTURES / "sentfin_sample.csv")["Title"].tolist()[:120]
        stream = tmp_path / "stream.csv"
        pd.DataFrame({"id": range(120), "timestamp": [f"2026-10-{1 + i % 12:02d}" for i in range(120)], "text": heads}).to_csv(stream, index=False)
        store = f"monitor.store=postgresql://lmops@127.0.0.1:{postgres}/monitor"
        for expected in ((120, 0), (0, 120)):  # the second time: every id is already in the store
            scored = run_cli("monitor", "score", "--input", str(stream), store, "monitor.drift.min_rows=50", "--json", cwd=project, env=env)
            assert scored.returncode == 0, scored.stderr[-3000:]
            out = json.loads(scored.stdout.splitlines()[-1])
            assert (out["scoring"]["scored"], out["scoring"]["duplicates"]) == expected and out["version"] == "1"
        assert "no reference" not in out["drift"]["verdict"] and out["drift"]["n"] == 120
        with psycopg.connect(f"postgresql://lmops@127.0.0.1:{postgres}/monitor") as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT version) FROM docs").fetchone() == (120, 1)
        # ...and the restore path reads the data back from the object store
        restored = run_cli("audit", "finance-sentiment@1", "--restore", str(tmp_path / "restored"), "--json", cwd=project, env=env)
        assert restored.returncode == 0, restored.stderr[-3000:]
        assert (tmp_path / "restored" / "data" / "train.parquet").is_file()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
