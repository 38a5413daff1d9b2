import pandas as pd
import pytest

from lmops.config import ValidateParams
from lmops.errors import DataError
from tasks.validate import validate_frames, validate_snapshot


def test_ingested_snapshot_passes(ingested, tmp_path):
    out, _, p = ingested
    report = validate_snapshot(out, p.validate_, tmp_path)
    assert report.success and len(report.outcomes) == 11
    assert (tmp_path / "validation.md").read_text().startswith("**All expectations passed.**")


def test_bad_frames_fail_naming_expectations(tmp_path):
    labeled = pd.DataFrame({"id": ["a", "b", "b"], "text": ["good headline text", "x", None], "label": ["positive", "bullish", "neutral"]})
    corpus = pd.DataFrame({"id": ["c1"], "text": ["some corpus text here"]})
    report = validate_frames({"labeled": labeled, "corpus": corpus}, ValidateParams(min_labeled_rows=1, min_corpus_rows=1))
    failed = {(f.suite, f.expectation, f.column) for f in report.failures}
    assert ("labeled", "expect_column_values_to_be_in_set", "label") in failed
    assert ("labeled", "expect_column_values_to_be_unique", "id") in failed
    assert ("labeled", "expect_column_values_to_not_be_null", "text") in failed
    assert ("labeled", "expect_column_value_lengths_to_be_between", "text") in failed
    assert not report.success


def test_failed_snapshot_raises_data_error(ingested, tmp_path):
    out, _, p = ingested
    strict = p.validate_.model_copy(update={"min_labeled_rows": 10_000})
    with pytest.raises(DataError, match=r"expect_table_row_count_to_be_between\(\) observed \d+"):
        validate_snapshot(out, strict, tmp_path)
    assert "❌" in (tmp_path / "validation.md").read_text()
