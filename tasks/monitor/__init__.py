"""Finance sentiment monitoring: the champion scores a stream of unlabeled text; aggregates per company and time
bucket, spike alerts, drift against the training data and a dashboard page.

Nothing here trains, so none of it enters the training code version (``stagecache.code_version``): changing the
monitor never makes a model look stale.

- ``inputs``: reading documents (CSV/JSONL/Parquet, in chunks) with the ingest normalization and quarantine rules
- ``entities``: which companies a text mentions (a dictionary of names, aliases and tickers in params)
- ``scoring``: the champion by alias, predictions, per-document drift features
- ``store``: scored documents, mentions, alerts and drift checks in DuckDB (default) or PostgreSQL
- ``spikes``, ``drift``: the detectors (pure functions over aggregates and profiles)
- ``dashboard``: the HTML page and the PNG plot
- ``export``, ``runtime``: ONNX Runtime copies of a version, made and checked (``lmops export``) and scored with
- ``run``: the monitor stage the CLI and the flow both call
"""
