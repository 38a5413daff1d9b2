"""The team stack's files, checked offline (no Docker daemon here): infra/docker-compose.yml against the
Compose Specification's own JSON schema (tests/fixtures/compose-spec, Apache-2.0), and the properties a
stack that starts needs. tests/test_team_stack.py runs the same stack natively."""

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "infra" / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_compose_file_passes_the_compose_specification_schema():
    import jsonschema

    schema = json.loads((REPO / "tests" / "fixtures" / "compose-spec" / "compose-spec.json").read_text())
    jsonschema.validate(_compose(), schema)


def test_the_compose_stack_is_pinned_private_healthy_and_fully_configured():
    services = _compose()["services"]
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin the image by tag ({image!r})"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
    # what trains and what stores depend on each other in the order a cold start needs
    assert services["mlflow"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"
    assert services["prefect-worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert not any("minio/minio" in s.get("image", "") for s in services.values()), "minio/minio is no longer published"
    # every variable the file needs is in the example env file, and none has a value in the compose file itself
    needed = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (REPO / "infra" / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert needed <= example, needed - example
    assert (REPO / ".dockerignore").is_file() and ".venv" in (REPO / ".dockerignore").read_text().split()


def test_the_images_install_the_team_clients():
    assert '".[team]"' in (REPO / "infra" / "docker" / "Dockerfile").read_text()
    mlflow = (REPO / "infra" / "docker" / "mlflow.Dockerfile").read_text()
    assert "psycopg" in mlflow and "boto3" in mlflow
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("dvc-s3") for d in extras["team"]), "the documented S3 DVC remote needs dvc-s3"


def test_the_kubernetes_job_template_passes_prefect_kubernetes_validation():
    """The template `prefect work-pool create lmops-k8s --type kubernetes --base-job-template infra/k8s/…` takes,
    rendered with its defaults and validated by prefect-kubernetes' own job configuration (the check a Prefect 3
    worker applies: a `prefect-job` container, parallelism and completions 1, …)."""
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "infra" / "k8s" / "work-pool-job-template.json").read_text())
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values["command"] = "prefect flow-run execute"
    config = KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], values))
    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "prefect-job" and container["image"] == "lmops:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    broken = json.loads(json.dumps(template["job_configuration"]).replace('"prefect-job"', '"flow"'))
    import pytest

    with pytest.raises(ValueError, match="incompatible values"):
        KubernetesWorkerJobConfiguration(**apply_values(broken, values))
