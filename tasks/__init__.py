"""Stage logic as plain typed functions over paths and params; no Prefect in here."""

import lmops  # noqa: F401  (sets offline/telemetry defaults before any heavy import)
