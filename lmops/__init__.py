"""lmops: an orchestrated MLOps pipeline for self-supervised NLP.

Importing the package sets offline and telemetry-off defaults (never overriding a user's own
choice) and points Prefect at the project's local state folder, so a user never has to.

The stage code sits in the repository's top-level folders ``tasks/`` and ``flows/`` (the tree reads as
the pipeline), but its import names are ``lmops.tasks`` and ``lmops.flows``: nothing named ``tasks``
lands in site-packages. An install maps them through ``package-dir`` in pyproject.toml; a source
checkout (``PYTHONPATH=.``, a bare GPU machine) through the path entry below.
"""

from pathlib import Path as _Path

from lmops.env import apply_defaults as _apply_defaults

_apply_defaults()

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "tasks" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own __path__

__version__ = "0.1.0"
