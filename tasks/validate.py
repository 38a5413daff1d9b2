"""Validate: Great Expectations suites on the labeled splits and the pretraining corpus.

A failed expectation raises DataError naming each expectation, its column and the observed value,
so the flow stops before any training. With ``docs_dir`` the suites run as GX checkpoints whose
UpdateDataDocsAction renders the HTML Data Docs into the run folder.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmops.config import EngineParams, ValidateParams
from lmops.errors import DataError
from lmops.kinds import KINDS, TaskKind

# HTML/XML tags or character entities left in text (scraped pages, filings); [0-9], not \d: see boilerplate_patterns.
# Two patterns, not their alternation: each starts with one literal character, so RE2 skips to its next occurrence
# (memchr), where the alternation, with two first characters, runs its automaton over every byte (on the 10-K corpus
# 2 + 1.5 ms against 38 ms)
MARKUP = (r"<[A-Za-z/!][^>]{0,200}>", r"&(?:[a-z]{2,8}|#[0-9]{2,5});")


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str
    column: str | None
    success: bool
    observed: Any


@dataclass
class ValidationReport:
    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    data_docs: str | None = None  # index.html of the rendered Data Docs
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_markdown(self) -> str:
        lines = ["| suite | expectation | column | ok | observed |", "|---|---|---|---|---|"]
        for o in self.outcomes:
            lines.append(f"| {o.suite} | {o.expectation} | {o.column or ''} | {'✅' if o.success else '❌'} | {o.observed} |")
        head = "**All expectations passed.**" if self.success else f"**{len(self.failures)} expectation(s) failed.**"
        tail = [f"- {n}" for n in self.notes] + ([f"- Data Docs (HTML): `{self.data_docs}`"] if self.data_docs else [])
        return head + "\n\n" + "\n".join(lines) + ("\n\n" + "\n".join(tail) if tail else "")

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "outcomes": [asdict(o) for o in self.outcomes], "data_docs": self.data_docs, "notes": self.notes}


def any_of(patterns: list[str]) -> list[str]:
    """The patterns as one alternation that matches where any of them does (a one-element list), or the patterns
    themselves where they do not combine (a group reference, a group name used twice). GX scans the column once per
    pattern of a regex list: on the 10-K corpus seven scans took 0.12 s, their alternation 0.04 s."""
    from lmops.text import scoped

    if len(patterns) < 2 or any(re.search(r"\\[1-9]|\(\?P=", p) for p in patterns):
        return list(patterns)
    combined = "|".join(map(scoped, patterns))
    try:
        re.compile(combined)
    except re.error:
        return list(patterns)
    return [combined]


@functools.cache
def _markup_expectation():
    """``expect_column_values_to_not_hold_markup``: GX's regex-list expectation (a row is unexpected where any of
    its patterns matches) under its own name, so that the report tells it from the boilerplate one. Defined on first
    use: GX is imported lazily, and a class registers itself with GX when it is made."""
    from great_expectations.expectations import ExpectColumnValuesToNotMatchRegexList

    class ExpectColumnValuesToNotHoldMarkup(ExpectColumnValuesToNotMatchRegexList):
        """Rows holding HTML/XML tags or character entities (each kind of markup one pattern)."""

    return ExpectColumnValuesToNotHoldMarkup


def _text_quality(E, p: ValidateParams) -> list:
    # markup and boilerplate are counted per row; up to the configured share is tolerated
    markup = _markup_expectation()(column="text", regex_list=list(MARKUP), mostly=round(1 - p.max_markup_share, 6))
    if not p.boilerplate_patterns:
        return [markup]
    regexes = any_of(list(p.boilerplate_patterns))
    combined = len(p.boilerplate_patterns) > 1 and len(regexes) == 1
    notes = "Any of validate.boilerplate_patterns, as one alternation: " + ", ".join(f"`{x}`" for x in p.boilerplate_patterns) if combined else None
    return [markup, E.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=regexes, mostly=round(1 - p.max_boilerplate_share, 6),
                                                            notes=notes)]


def _drift(E, p: ValidateParams, previous: dict[str, int] | None) -> list:
    """KL(current labels ‖ previous version's labels) below ``validate.max_label_drift_kl``."""
    if not previous or p.max_label_drift_kl is None:
        return []
    total = sum(previous.values())
    values = sorted(previous)
    return [E.ExpectColumnKLDivergenceToBeLessThan(
        column="label", partition_object={"values": values, "weights": [previous[v] / total for v in values]}, threshold=p.max_label_drift_kl)]


def _labeled_suite(gx, p: ValidateParams, kind: TaskKind, previous: dict[str, int] | None = None):
    E = gx.expectations
    return _text_quality(E, p) + [
        E.ExpectTableRowCountToBeBetween(min_value=p.min_labeled_rows, max_value=p.max_labeled_rows),
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=p.mostly),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.text_min_chars, max_value=p.text_max_chars, mostly=p.mostly),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeUnique(column="id"),
    ] + kind.expectations(E, p, _drift(E, p, previous))


def _corpus_suite(gx, p: ValidateParams, kind: TaskKind, previous=None):
    E = gx.expectations
    return _text_quality(E, p) + [
        E.ExpectTableRowCountToBeBetween(min_value=p.min_corpus_rows, max_value=p.max_corpus_rows),
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=p.mostly),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.text_min_chars, max_value=p.text_max_chars, mostly=p.mostly),
        E.ExpectColumnValuesToBeUnique(column="id"),
    ]


def _auxiliary_suite(gx, p: ValidateParams, kind: TaskKind, previous=None):
    """Headlines kept for their entity labels alone (ingest.sources[].mixed_entities: auxiliary): training text too."""
    E = gx.expectations
    return _text_quality(E, p) + [
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=p.mostly),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.text_min_chars, max_value=p.text_max_chars, mostly=p.mostly),
        E.ExpectColumnValuesToNotBeNull(column="entities"),
        E.ExpectColumnValuesToBeNull(column="label"),
        E.ExpectColumnValuesToBeUnique(column="id"),
    ]


def _sources_suite(gx, p: ValidateParams, kind: TaskKind, previous=None):
    """One row per source (from the snapshot's summary.json): how much of it ingest quarantined."""
    E = gx.expectations
    return [E.ExpectColumnValuesToBeBetween(column="quarantined_share", min_value=0, max_value=p.max_quarantine_share)]


def sources_frame(summary: dict[str, Any]):
    import pandas as pd

    rows = [{"source": name, "rows_in": c["rows_in"], "quarantined": c["quarantined"],
             "quarantined_share": round(c["quarantined"] / c["rows_in"], 6) if c["rows_in"] else 0.0}
            for name, c in sorted(summary.get("sources", {}).items())]
    return pd.DataFrame(rows, columns=["source", "rows_in", "quarantined", "quarantined_share"])


def _observed(res: dict[str, Any]) -> Any:
    for key in ("observed_value", "unexpected_percent"):
        if key in res and res[key] is not None:
            val = res[key]
            return f"{val:.2f}% unexpected" if key == "unexpected_percent" else val
    return res.get("partial_unexpected_list", "")


@dataclass
class RowGroups:
    """A Parquet file validated a piece at a time (a corpus larger than memory): each piece of at most ``rows``
    rows is a GX batch of the same suite, and the results are combined over all rows (``_combine``). Pieces lie
    within the file's row groups, so each is read on its own: on this process or on an engine's worker."""

    path: Path
    rows: int

    def pieces(self) -> list[tuple[int, int, int]]:
        """(row group, first row in it, rows) of every piece, in file order."""
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path).metadata
        return [(g, start, min(self.rows, meta.row_group(g).num_rows - start))
                for g in range(meta.num_row_groups) for start in range(0, meta.row_group(g).num_rows, self.rows)]

    def read(self, piece: tuple[int, int, int]):
        """One piece alone (a worker's read: its whole row group, then the piece's rows)."""
        import pyarrow.parquet as pq

        group, start, rows = piece
        return pq.ParquetFile(self.path).read_row_group(group).slice(start, rows).to_pandas()

    def __iter__(self):
        import pyarrow.parquet as pq

        file, current, table = pq.ParquetFile(self.path), None, None
        for group, start, rows in self.pieces():
            if group != current:  # each row group read once, however many pieces it holds
                table, current = file.read_row_group(group), group
            yield table.slice(start, rows).to_pandas()


def _combine(results: list, hashes: dict[str, list]) -> Any:
    """One suite result over all the batches: row counts summed, per-row expectations judged on the summed counts
    (their ``mostly`` over every row), uniqueness over every row (``hashes``: 64-bit hashes of each unique-checked
    column, batch by batch). Written into the last batch's result object, so GX renders it as any other."""
    import numpy as np

    combined = results[-1]
    for k, r in enumerate(combined.results):
        cfg = r.expectation_config
        parts = [res.results[k].result or {} for res in results]
        if cfg.type == "expect_table_row_count_to_be_between":
            n = sum(x.get("observed_value") or 0 for x in parts)
            lo, hi = cfg.kwargs.get("min_value"), cfg.kwargs.get("max_value")
            r.result = {"observed_value": n}
            r.success = (lo is None or n >= lo) and (hi is None or n <= hi)
            continue
        element = sum(x.get("element_count", 0) for x in parts)
        missing = sum(x.get("missing_count", 0) for x in parts)
        unexpected = sum(x.get("unexpected_count", 0) for x in parts)
        if cfg.type == "expect_column_values_to_be_unique":
            h = np.concatenate(hashes[cfg.kwargs["column"]]) if hashes[cfg.kwargs["column"]] else np.zeros(0, np.uint64)
            _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
            unexpected = int((counts[inverse] > 1).sum())
        nonmissing = element - missing
        mostly = cfg.kwargs.get("mostly") or 1.0
        r.success = nonmissing == 0 or (nonmissing - unexpected) / nonmissing >= mostly
        sample = [v for x in parts for v in x.get("partial_unexpected_list") or []][:20]
        r.result = {"element_count": element, "unexpected_count": unexpected, "missing_count": missing,
                    "unexpected_percent": 100 * unexpected / nonmissing if nonmissing else 0.0, "partial_unexpected_list": sample}
    ok = sum(bool(r.success) for r in combined.results)
    combined.success = ok == len(combined.results)
    combined.statistics = {"evaluated_expectations": len(combined.results), "successful_expectations": ok,
                           "unsuccessful_expectations": len(combined.results) - ok,
                           "success_percent": 100 * ok / len(combined.results) if combined.results else 100.0}
    return combined


def _unique_columns(suite) -> list[str]:
    return [e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_unique"]


def _piece_result(validation, unique_cols: list[str], frame) -> tuple[Any, dict[str, Any]]:
    """One piece's suite result, and 64-bit hashes of its unique-checked columns (uniqueness is judged over all)."""
    import pandas as pd

    result = validation.run(batch_parameters={"dataframe": frame})
    for r in result.results:  # row indexes within a piece mean nothing once pieces are combined
        (r.result or {}).pop("partial_unexpected_index_list", None)
    return result, {c: pd.util.hash_pandas_object(frame[c].dropna(), index=False).to_numpy() for c in unique_cols}


_WORKER_VALIDATIONS: dict[str, Any] = {}


def validate_piece(path: str, rows: int, piece: tuple[int, int, int], name: str, params: dict[str, Any], kind_name: str,
                   previous: dict[str, int] | None) -> tuple[Any, dict[str, Any]]:
    """Validate one piece of a Parquet file with the ``name`` suite: runs on an engine's worker (which then needs
    the file: local workers share this disk; a cluster, a shared file system). The GX context and suite are built
    once per worker process and params."""
    key = json.dumps([name, params, kind_name, previous], sort_keys=True, default=str)
    if key not in _WORKER_VALIDATIONS:
        ctx = _context(None)
        _WORKER_VALIDATIONS.clear()  # one suite at a time: a long-lived worker must not collect contexts
        _WORKER_VALIDATIONS[key] = _validation(ctx, ctx.data_sources.add_pandas("lmops"), name, ValidateParams(**params), KINDS[kind_name], previous)
    validation, suite = _WORKER_VALIDATIONS[key]
    return _piece_result(validation, _unique_columns(suite), RowGroups(Path(path), rows).read(piece))


def _validate_row_groups(ctx, validation, suite, pieces: RowGroups, docs: bool, name: str, engine=None, remote_args=()):
    """Validate every piece (on ``engine``'s workers where one is given), combine, and (with ``docs``) store the
    combined result and render it."""
    import pandas as pd

    unique_cols = _unique_columns(suite)
    results, hashes = [], {c: [] for c in unique_cols}
    if engine is None:
        done = (_piece_result(validation, unique_cols, frame) for frame in pieces)
    else:
        done = engine.map(validate_piece, ((str(pieces.path), pieces.rows, piece, name, *remote_args) for piece in pieces.pieces()))
    for result, piece_hashes in done:
        results.append(result)
        for c in unique_cols:
            hashes[c].append(piece_hashes[c])
    if not results:  # an empty file: validate the empty frame, so the row-count floor speaks
        results.append(validation.run(batch_parameters={"dataframe": pd.DataFrame(columns=["id", "text"])}))
    combined = _combine(results, hashes)
    combined.meta["lmops_pieces"] = f"{len(results)} pieces of at most {pieces.rows} rows of {pieces.path.name}"
    if docs:
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

        key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
                                         run_id=RunIdentifier(run_name=f"{name}_all_row_groups"), batch_identifier=f"{name}_all")
        ctx.validation_results_store.set(key, combined)
        ctx.build_data_docs(site_names=["lmops"])
    return combined


def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    try:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # noqa: BLE001 - cosmetic only; older GX lacks the setting
        pass
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        ctx.add_data_docs_site(site_name="lmops", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}})
    return ctx


_BUILDERS = {"labeled": _labeled_suite, "corpus": _corpus_suite, "auxiliary": _auxiliary_suite, "sources": _sources_suite}


def _validation(ctx, source, name: str, p: ValidateParams, kind: TaskKind, previous: dict[str, int] | None):
    """(validation definition, suite) of one frame name: its suite from params, a whole-dataframe batch."""
    import great_expectations as gx

    definition = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=_BUILDERS[name](gx, p, kind, previous)))
    # a validation definition, not batch.validate(suite): that fetches the batch twice, and GX fingerprints the
    # whole frame on each fetch (0.1 s per fetch on the 10-K corpus)
    return ctx.validation_definitions.add(gx.ValidationDefinition(data=definition, suite=suite, name=f"{name}_validation")), suite


def validate_frames(frames: dict[str, Any], p: ValidateParams, kind: TaskKind = KINDS["sequence"], previous_labels: dict[str, int] | None = None,
                    docs_dir: Path | None = None, engine: EngineParams | None = None) -> ValidationReport:
    """Run the suites over in-memory frames: ``{"labeled": df, "corpus": df}``; a ``RowGroups`` in place of a
    frame is validated a piece at a time, its results combined over all its rows, the pieces on ``engine``'s
    workers where it is not the local one.

    ``previous_labels``: label counts of the previous data version (drift check); ``docs_dir``: render
    the HTML Data Docs there.
    """
    import great_expectations as gx

    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas("lmops")
    report = ValidationReport(success=True)
    for name, frame in frames.items():
        vd, suite = _validation(ctx, source, name, p, kind, previous_labels)
        if isinstance(frame, RowGroups):
            from lmops.tasks.engine import open_engine

            running = open_engine(engine or EngineParams())
            try:
                result = _validate_row_groups(ctx, vd, suite, frame, docs_dir is not None, name, None if running.in_process else running,
                                              (p.model_dump(mode="json"), kind.name, previous_labels))
            finally:
                running.close()
            if not running.in_process:
                report.notes.append(f"{name}: its pieces validated on {engine.kind} workers ({engine.address or f'a local cluster of {engine.workers}'})")
        elif docs_dir is None:
            result = vd.run(batch_parameters={"dataframe": frame})
        else:
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["lmops"])]))
            result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
        for r in result.results:
            cfg = r.expectation_config
            report.outcomes.append(
                ExpectationOutcome(
                    suite=name,
                    expectation=cfg.type,
                    column=cfg.kwargs.get("column"),
                    success=bool(r.success),
                    observed=_json_safe(_observed(r.result or {})),
                )
            )
        report.success &= bool(result.success)
    return report


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def previous_label_counts(previous_dir: Path | None, labels: list[str], kind: TaskKind) -> tuple[dict[str, int] | None, str | None]:
    """Label counts of the previous data version (its summary.json), when comparable; else (None, why not)."""
    if not kind.label_drift:
        return None, f"label drift is not checked for {kind.name} tasks (labels are tag sequences)"
    summary = previous_dir / "summary.json" if previous_dir else None
    if summary is None or not summary.exists():
        return None, "no previous data version: label drift not checked"
    counts = json.loads(summary.read_text()).get("label_counts") or {}
    if not counts or not set(counts) <= set(labels):
        return None, f"previous data version has other labels {sorted(counts)}: label drift not checked"
    return {k: int(v) for k, v in counts.items()}, None


def validate_snapshot(data_dir: Path, p: ValidateParams, out_dir: Path, kind: TaskKind = KINDS["sequence"], previous_dir: Path | None = None,
                      engine: EngineParams | None = None) -> ValidationReport:
    """Validate an ingested snapshot; writes validation.json/.md and the HTML Data Docs (``data_docs/``) to
    ``out_dir``; raises on failure. ``previous_dir``: the previous data version (for label drift); ``engine``:
    where the pieces of a corpus validated in pieces run (``ingest.engine``)."""
    import pandas as pd
    import pyarrow.parquet as pq

    labeled = pd.concat([pd.read_parquet(data_dir / f"{s}.parquet") for s in ("train", "validation", "test")], ignore_index=True)
    rows = pq.ParquetFile(data_dir / "corpus.parquet").metadata.num_rows
    # a corpus past validate.corpus_batch_rows is validated in pieces, never loaded whole
    corpus = RowGroups(data_dir / "corpus.parquet", p.corpus_batch_rows) if rows > p.corpus_batch_rows else pd.read_parquet(data_dir / "corpus.parquet")
    previous, note = previous_label_counts(previous_dir, p.labels, kind)
    frames = {"labeled": labeled, "corpus": corpus}
    if (data_dir / "auxiliary.parquet").exists():
        frames["auxiliary"] = pd.read_parquet(data_dir / "auxiliary.parquet")
    if (data_dir / "summary.json").exists():
        frames["sources"] = sources_frame(json.loads((data_dir / "summary.json").read_text()))
    report = validate_frames(frames, p, kind, previous, docs_dir=out_dir / "data_docs", engine=engine)
    if "sources" in frames:
        over = frames["sources"][frames["sources"]["quarantined_share"] > p.max_quarantine_share]
        report.notes += [f"source {r.source!r}: {r.quarantined} of {r.rows_in} rows quarantined ({r.quarantined_share:.0%} > "
                         f"validate.max_quarantine_share {p.max_quarantine_share}); see quarantine.parquet for the reasons"
                         for r in over.itertuples()]
    index = out_dir / "data_docs" / "index.html"
    report.data_docs = str(index) if index.exists() else None
    report.notes += [note] if note else [f"label drift checked against the previous data version {previous}"]
    if isinstance(corpus, RowGroups):
        report.notes.append(f"corpus ({rows} rows) validated {corpus.rows} rows at a time; counts, shares and uniqueness are over all rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (out_dir / "validation.md").write_text(report.to_markdown())
    if not report.success:
        lines = [f"- {f.suite}: {f.expectation}({f.column or ''}) observed {f.observed}" for f in report.failures]
        lines += [f"- {n}" for n in report.notes if "max_quarantine_share" in n]
        raise DataError(
            f"data validation failed for {data_dir} ({len(report.failures)} expectation(s)); no training was started:\n"
            + "\n".join(lines)
            + f"\nSee {out_dir / 'validation.md'}; fix the data or the bounds in the validate section of params.yaml."
        )
    return report
