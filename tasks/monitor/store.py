"""Where the monitor keeps what it scored: an embedded DuckDB file under LMOPS_HOME by default, or a PostgreSQL
database (``monitor.store: postgresql://...``) that a team's workers share. The SQL is the subset both speak.

Documents are keyed by id, so re-scoring a batch inserts nothing twice; a chunk's documents and mentions go in one
transaction, so a crash never leaves a document without its mentions. Aggregates are computed in the database.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from lmops.tasks.monitor.spikes import Bucket, Spike

ALL = "(all documents)"  # the aggregate over every document, next to the per-company ones

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, source TEXT, file TEXT, text TEXT,
       label TEXT, confidence DOUBLE PRECISION, score DOUBLE PRECISION, model TEXT, version TEXT, words INTEGER, oov INTEGER,
       tokens INTEGER, unk INTEGER, scored_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS mentions (doc_id TEXT NOT NULL, entity TEXT NOT NULL, surface TEXT, ts DOUBLE PRECISION NOT NULL,
       label TEXT, score DOUBLE PRECISION, version TEXT, by_entity_model BOOLEAN, PRIMARY KEY (doc_id, entity))""",
    """CREATE TABLE IF NOT EXISTS alerts (entity TEXT NOT NULL, bucket DOUBLE PRECISION NOT NULL, bucket_s INTEGER NOT NULL,
       z DOUBLE PRECISION, mean DOUBLE PRECISION, baseline DOUBLE PRECISION, volume INTEGER, direction TEXT, versions TEXT,
       raised_at DOUBLE PRECISION, PRIMARY KEY (entity, bucket, bucket_s))""",
    """CREATE TABLE IF NOT EXISTS drift_checks (checked_at DOUBLE PRECISION NOT NULL, version TEXT, n INTEGER, drifted BOOLEAN,
       verdict TEXT, checks TEXT)""",
]

DOC_COLS = ("id", "ts", "source", "file", "text", "label", "confidence", "score", "model", "version", "words", "oov", "tokens", "unk", "scored_at")
MENTION_COLS = ("doc_id", "entity", "surface", "ts", "label", "score", "version", "by_entity_model")


def default_url() -> str:
    from lmops.env import lmops_home

    return f"duckdb:///{lmops_home() / 'monitor' / 'monitor.duckdb'}"


class Store:
    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.postgres = self.url.startswith(("postgresql://", "postgres://"))
        self.conn = None

    @property
    def where(self) -> str:
        return self.url if not self.postgres else self.url.split("@")[-1]  # no password in messages

    def __enter__(self) -> "Store":
        from lmops.errors import TransientError, UserError

        if self.postgres:
            try:
                import psycopg
            except ImportError as exc:
                raise UserError("monitor.store is a PostgreSQL URL: install the team extra (pip install 'lmops[team]')") from exc
            try:
                self.conn = psycopg.connect(self.url)
            except psycopg.OperationalError as exc:
                raise TransientError(f"monitor store {self.where}: cannot connect ({exc})") from exc
        else:
            import duckdb

            path = Path(self.url.removeprefix("duckdb:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # a bounded buffer pool: scoring a large input keeps a flat memory profile (DuckDB's default is 80% of RAM)
                self.conn = duckdb.connect(str(path), config={"memory_limit": "256MB"})
            except duckdb.IOException as exc:  # another process has it open for writing
                raise TransientError(f"monitor store {path} is in use by another process ({exc}); retry") from exc
        for stmt in SCHEMA:
            self._exec(stmt)
        self.commit()
        return self

    def __exit__(self, *exc) -> None:
        if self.conn is not None:
            if exc[0] is None:
                self.commit()
            else:
                try:
                    self.conn.rollback()
                except Exception:  # noqa: BLE001 - DuckDB outside a transaction: nothing to undo
                    pass
            self.conn.close()
            self.conn = None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _exec(self, sql: str, params: Iterable[Any] = ()):
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), list(params))
        return cur

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            cur = self.conn.cursor()
            cur.executemany(self._sql(sql), rows)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self._exec(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def commit(self) -> None:
        self.conn.commit()

    # --- documents -------------------------------------------------------------------------------------
    def known(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            found |= {r["id"] for r in self._rows(f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(part))})", part)}
        return found

    def add(self, docs: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> None:
        """One chunk, in one transaction (ids already in the store are left as they are)."""
        if self.postgres:  # psycopg opens the transaction itself and pipelines executemany
            self._many(f"INSERT INTO docs ({','.join(DOC_COLS)}) VALUES ({','.join('?' * len(DOC_COLS))}) ON CONFLICT (id) DO NOTHING",
                       [tuple(d[c] for c in DOC_COLS) for d in docs])
            self._many(f"INSERT INTO mentions ({','.join(MENTION_COLS)}) VALUES ({','.join('?' * len(MENTION_COLS))}) "
                       "ON CONFLICT (doc_id, entity) DO NOTHING", [tuple(m[c] for c in MENTION_COLS) for m in mentions])
        else:  # DuckDB: one columnar insert per table (executemany goes row by row, ~100x slower), in one transaction
            import pandas as pd

            self.conn.begin()
            for table, rows, cols, key in (("docs", docs, DOC_COLS, "id"), ("mentions", mentions, MENTION_COLS, "doc_id, entity")):
                if rows:
                    self.conn.register("lmops_chunk", pd.DataFrame(rows, columns=list(cols)))
                    self.conn.execute(f"INSERT INTO {table} ({','.join(cols)}) SELECT {','.join(cols)} FROM lmops_chunk ON CONFLICT ({key}) DO NOTHING")
                    self.conn.unregister("lmops_chunk")
        self.commit()

    def totals(self) -> dict[str, Any]:
        docs = self._rows("SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM docs")[0]
        versions = self._rows("SELECT model, version, count(*) AS n FROM docs GROUP BY model, version ORDER BY n DESC")
        mentions = self._rows("SELECT count(*) AS n, count(DISTINCT entity) AS entities FROM mentions")[0]
        return {"documents": int(docs["n"]), "first": docs["first"], "last": docs["last"], "mentions": int(mentions["n"]),
                "entities": int(mentions["entities"]), "versions": [{**v, "n": int(v["n"])} for v in versions]}

    # --- aggregates ------------------------------------------------------------------------------------
    def buckets(self, bucket_s: int, positive: str, negative: str) -> dict[str, list[Bucket]]:
        """Per entity (and ``ALL``), per time bucket: volume, mean score, mean squared score, shares, model versions."""
        agg = ("count(*) AS volume, avg(score) AS mean, avg(score * score) AS mean_sq, "
               "avg(CASE WHEN label = ? THEN 1.0 ELSE 0.0 END) AS neg_share, avg(CASE WHEN label = ? THEN 1.0 ELSE 0.0 END) AS pos_share, "
               "string_agg(DISTINCT version, ',') AS versions")
        rows = self._rows(f"SELECT CAST(? AS TEXT) AS entity, floor(ts / ?) * ? AS bucket, {agg} FROM docs GROUP BY 2 "
                          f"UNION ALL SELECT entity, floor(ts / ?) * ? AS bucket, {agg} FROM mentions GROUP BY 1, 2 ORDER BY 1, 2",
                          [ALL, bucket_s, bucket_s, negative, positive, bucket_s, bucket_s, negative, positive])
        out: dict[str, list[Bucket]] = {}
        for r in rows:
            out.setdefault(r["entity"], []).append(Bucket(float(r["bucket"]), int(r["volume"]), float(r["mean"]), float(r["mean_sq"]),
                                                          float(r["neg_share"]), float(r["pos_share"]), _versions(r["versions"])))
        return out

    def recent(self, version: str, model: str, n: int) -> list[dict[str, Any]]:
        """The newest ``n`` documents scored by ``model`` v``version`` (drift features)."""
        return self._rows("SELECT label, confidence, words, oov, tokens, unk FROM docs WHERE version = ? AND model = ? "
                          "ORDER BY scored_at DESC, ts DESC LIMIT ?", [version, model, n])

    # --- alerts and drift ------------------------------------------------------------------------------
    def new_alerts(self, spikes: list[Spike], bucket_s: int) -> list[Spike]:
        """Record spikes; returns those not alerted before (a spike alerts once, however often the monitor runs)."""
        fresh = []
        for s in spikes:
            if not self._rows("SELECT 1 AS x FROM alerts WHERE entity = ? AND bucket = ? AND bucket_s = ?", [s.entity, s.bucket, bucket_s]):
                fresh.append(s)
        self._many("INSERT INTO alerts (entity, bucket, bucket_s, z, mean, baseline, volume, direction, versions, raised_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [(s.entity, s.bucket, bucket_s, s.z, s.mean, s.baseline, s.volume, s.direction, s.versions, time.time()) for s in fresh])
        self.commit()
        return fresh

    def alerts(self, bucket_s: int) -> list[dict[str, Any]]:
        return self._rows("SELECT entity, bucket, z, mean, baseline, volume, direction, versions, raised_at FROM alerts "
                          "WHERE bucket_s = ? ORDER BY bucket DESC, entity", [bucket_s])

    def last_drift(self, version: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT drifted, verdict, checked_at FROM drift_checks WHERE version = ? ORDER BY checked_at DESC LIMIT 1", [version])
        return rows[0] if rows else None

    def record_drift(self, report) -> None:
        self._exec("INSERT INTO drift_checks (checked_at, version, n, drifted, verdict, checks) VALUES (?, ?, ?, ?, ?, ?)",
                   [time.time(), report.version, report.n, report.drifted, report.verdict, json.dumps(report.checks)])
        self.commit()


def _versions(text: str | None) -> str:
    return ",".join(sorted(set((text or "").split(",")) - {""}, key=lambda v: (len(v), v)))
