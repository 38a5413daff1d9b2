"""Shared fixtures: tiny params (2-layer, 64-dim models, a few hundred rows), isolated state dirs.

Everything runs offline: HF hubs are off, and every test's local state (MLflow DB, DVC remote,
runs) lives under its own tmp folder via LMOPS_HOME.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before anything imports lmops/prefect: an isolated home and offline hubs for the whole session.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="lmops-test-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["LMOPS_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Under pytest-xdist (make test runs two workers on two cores) every torch process gets one thread: two
# processes with two OpenMP threads each on two cores spin against each other and run ~4x slower.
# Subprocesses (CLI runs, torchrun ranks) inherit this.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def tiny_params_dict(**sections) -> dict:
    """params.yaml for tests: fixture data and tiny models; override any section by keyword."""
    base = {
        "project": {"seed": 7},
        "ingest": {
            "sources": [
                {"name": "sentfin", "role": "labeled", "format": "sentfin", "path": str(FIXTURES / "sentfin_sample.csv")},
                {"name": "fomc", "role": "unlabeled", "format": "fomc", "path": str(FIXTURES / "fomc")},
            ],
            "chunk_chars": 800,
            "validation_fraction": 0.15,
            "test_fraction": 0.15,
        },
        "validate": {"min_labeled_rows": 20, "min_corpus_rows": 5},
        "tokenize": {"vocab_size": 800, "block_size": 32},
        "pretrain": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "max_steps": 12,
                     "batch_size": 8, "warmup_steps": 2, "log_every": 4, "lr": 2e-3},
        "finetune": {"method": "full", "epochs": 3, "batch_size": 16, "lr": 2e-3, "max_length": 32, "patience": 3},
        "evaluate": {"batch_size": 64},
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


@pytest.fixture
def tiny_params():
    from lmops.config import params_from_dict

    return params_from_dict(tiny_params_dict())


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """A real, migrated, empty MLflow SQLite DB, made once per worker: creating one runs MLflow's schema
    migrations (~5 s here), which every fresh home would otherwise repeat. The embedded default that
    creates it on first use is still exercised by the fresh-home tests, which do not use this."""
    home = tmp_path_factory.mktemp("mlflow-template")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from lmops.tasks import registry; registry.client()")
    subprocess.run([sys.executable, "-c", code, str(REPO)], env={**os.environ, "LMOPS_HOME": str(home)}, check=True, capture_output=True)
    return home / "mlflow" / "mlflow.db"


@pytest.fixture
def lmops_home(tmp_path, monkeypatch, _empty_mlflow_db) -> Path:
    """A fresh LMOPS_HOME (MLflow DB, DVC remote, runs) for one test."""
    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    shutil.copy(_empty_mlflow_db, home / "mlflow" / "mlflow.db")
    monkeypatch.setenv("LMOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def project(tmp_path, lmops_home) -> Path:
    """A git repo with a tiny params.yaml: the shape of a user's lmops project."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "params.yaml"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "init"], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def ingested(tmp_path_factory):
    """One ingest of the fixtures shared by read-only tests."""
    from lmops.config import params_from_dict
    from lmops.tasks.ingest import ingest

    p = params_from_dict(tiny_params_dict())
    out = tmp_path_factory.mktemp("ingest")
    summary = ingest(p.ingest, p.validate_.labels, out, p.project.seed)
    return out, summary, p


@pytest.fixture(scope="session")
def tiny_lm(ingested, tmp_path_factory):
    """A tokenizer and a tiny MLM trained on the fixture corpus (session-scoped: seconds)."""
    from lmops.tasks.pretrain import pretrain
    from lmops.tasks.tokenize import tokenize_corpus

    data, _, p = ingested
    out = tmp_path_factory.mktemp("lm")
    tok = tokenize_corpus(data / "corpus.parquet", p.tokenize, "mlm", None, out / "tok")
    pre = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain, p.project.seed, out / "pre", progress=False)
    return tok, pre, p


@pytest.fixture(scope="session")
def prefect_api():
    """A real (temporary) Prefect API for flow tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmops.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def webhook():
    """A local HTTP receiver on 127.0.0.1 that keeps every JSON body POSTed to it."""
    import threading
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server (moto's, over HTTP, as a team's MinIO or SeaweedFS would be) with the AWS_*
    variables every client here reads pointing at it; yields its endpoint URL."""
    import time
    import urllib.request

    from tests.test_control_plane import _free_port

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


# The longest test files first (seconds on 2 AMD EPYC cores, session 18), so the two xdist workers of `make test`
# (--dist loadfile --no-loadscope-reorder) end together: xdist's own order, most tests first, sent these last and
# left one worker running the end alone for ~40 s.
LONGEST_FIRST = ("test_pretrain_engine.py", "test_audit.py", "test_flow.py", "test_distill.py", "test_finetune_evaluate.py",
                 "test_entity_ner.py", "test_ingest_scale.py", "test_reliability.py", "test_server_e2e.py", "test_stage_cli.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
