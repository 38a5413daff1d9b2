"""Prefect flows: thin wrappers that read like a table of contents over `tasks/`."""

import lmops  # noqa: F401  (PREFECT_HOME and offline defaults must be set before prefect imports)
