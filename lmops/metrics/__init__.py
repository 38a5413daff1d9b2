"""The project's own `evaluate` metric modules, loadable offline by file path."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    return str(METRICS_DIR / f"{name}.py")
