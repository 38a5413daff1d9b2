"""Validate: Great Expectations suites on the labeled splits and the pretraining corpus.

A failed expectation raises DataError naming each expectation, its column and the observed value,
so the flow stops before any training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmops.config import ValidateParams
from lmops.errors import DataError


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

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_markdown(self) -> str:
        lines = ["| suite | expectation | column | ok | observed |", "|---|---|---|---|---|"]
        for o in self.outcomes:
            lines.append(f"| {o.suite} | {o.expectation} | {o.column or ''} | {'✅' if o.success else '❌'} | {o.observed} |")
        head = "**All expectations passed.**" if self.success else f"**{len(self.failures)} expectation(s) failed.**"
        return head + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "outcomes": [asdict(o) for o in self.outcomes]}


def _labeled_suite(gx, p: ValidateParams, task: str = "sequence"):
    import re

    E = gx.expectations
    suite = [
        E.ExpectTableRowCountToBeBetween(min_value=p.min_labeled_rows, max_value=p.max_labeled_rows),
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=p.mostly),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.text_min_chars, max_value=p.text_max_chars, mostly=p.mostly),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeUnique(column="id"),
    ]
    if task == "token":
        # one tag per word, each from the label set
        tag = "(?:" + "|".join(re.escape(t) for t in sorted(p.labels, key=len, reverse=True)) + ")"
        suite += [E.ExpectColumnValuesToMatchRegex(column="label", regex=f"^{tag}(?: {tag})*$"),
                  E.ExpectColumnValuesToBeUnique(column="text", mostly=p.mostly)]
    elif task == "entity":
        # a headline appears once per entity: the (text, entity) pair is what must be unique
        suite += [E.ExpectColumnValuesToBeInSet(column="label", value_set=list(p.labels)),
                  E.ExpectColumnValuesToNotBeNull(column="entities"),
                  E.ExpectCompoundColumnsToBeUnique(column_list=["text", "entities"], mostly=p.mostly)]
    else:
        suite += [E.ExpectColumnValuesToBeInSet(column="label", value_set=list(p.labels)),
                  E.ExpectColumnValuesToBeUnique(column="text", mostly=p.mostly)]
    return suite


def _corpus_suite(gx, p: ValidateParams):
    E = gx.expectations
    return [
        E.ExpectTableRowCountToBeBetween(min_value=p.min_corpus_rows, max_value=p.max_corpus_rows),
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=p.mostly),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.text_min_chars, max_value=p.text_max_chars, mostly=p.mostly),
        E.ExpectColumnValuesToBeUnique(column="id"),
    ]


def _observed(res: dict[str, Any]) -> Any:
    for key in ("observed_value", "unexpected_percent"):
        if key in res and res[key] is not None:
            val = res[key]
            return f"{val:.2f}% unexpected" if key == "unexpected_percent" else val
    return res.get("partial_unexpected_list", "")


def validate_frames(frames: dict[str, Any], p: ValidateParams, task: str = "sequence") -> ValidationReport:
    """Run the suites over in-memory frames: ``{"labeled": df, "corpus": df}``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    try:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # noqa: BLE001 - cosmetic only; older GX lacks the setting
        pass
    source = ctx.data_sources.add_pandas("lmops")
    report = ValidationReport(success=True)
    builders = {"labeled": lambda gx_, p_: _labeled_suite(gx_, p_, task), "corpus": _corpus_suite}
    for name, frame in frames.items():
        asset = source.add_dataframe_asset(name=name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}_all").get_batch(batch_parameters={"dataframe": frame})
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=builders[name](gx, p)))
        result = batch.validate(suite)
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


def validate_snapshot(data_dir: Path, p: ValidateParams, out_dir: Path, task: str = "sequence") -> ValidationReport:
    """Validate an ingested snapshot; writes validation.json/.md to ``out_dir``; raises on failure."""
    import pandas as pd

    labeled = pd.concat([pd.read_parquet(data_dir / f"{s}.parquet") for s in ("train", "validation", "test")], ignore_index=True)
    corpus = pd.read_parquet(data_dir / "corpus.parquet")
    report = validate_frames({"labeled": labeled, "corpus": corpus}, p, task)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (out_dir / "validation.md").write_text(report.to_markdown())
    if not report.success:
        lines = [f"- {f.suite}: {f.expectation}({f.column or ''}) observed {f.observed}" for f in report.failures]
        raise DataError(
            f"data validation failed for {data_dir} ({len(report.failures)} expectation(s)); no training was started:\n"
            + "\n".join(lines)
            + f"\nSee {out_dir / 'validation.md'}; fix the data or the bounds in the validate section of params.yaml."
        )
    return report
