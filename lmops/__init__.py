"""lmops: an orchestrated MLOps pipeline for self-supervised NLP.

Importing the package sets offline and telemetry-off defaults (never overriding a user's own
choice) and points Prefect at the project's local state folder, so a user never has to.
"""

from lmops.env import apply_defaults as _apply_defaults

_apply_defaults()

__version__ = "0.1.0"
