import pandas as pd
import pytest

from lmops.config import ValidateParams
from lmops.errors import DataError
from lmops.tasks.validate import validate_frames, validate_snapshot


def test_ingested_snapshot_passes(ingested, tmp_path):
    out, _, p = ingested
    report = validate_snapshot(out, p.validate_, tmp_path)
    # 9 labeled (2 text-quality) + 6 corpus (2 text-quality) + 1 per-source quarantine share; no drift: no previous version
    assert report.success and len(report.outcomes) == 16
    assert (tmp_path / "validation.md").read_text().startswith("**All expectations passed.**")
    # the HTML Data Docs are rendered into the run folder: an index and one validation page per suite
    assert report.data_docs == str(tmp_path / "data_docs" / "index.html") and "<html" in (tmp_path / "data_docs" / "index.html").read_text().lower()
    assert {p.parent.parent.parent.name for p in (tmp_path / "data_docs" / "validations").rglob("*.html")} == {"labeled_suite", "corpus_suite", "sources_suite"}
    assert "no previous data version" in " ".join(report.notes)


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


def test_label_drift_against_the_previous_version(ingested, tmp_path):
    import json

    out, summary, p = ingested
    same = tmp_path / "same"
    same.mkdir()
    (same / "summary.json").write_text(json.dumps({"label_counts": summary.label_counts}))
    ok = validate_snapshot(out, p.validate_, tmp_path / "v1", previous_dir=same)
    drift = [o for o in ok.outcomes if o.expectation == "expect_column_kl_divergence_to_be_less_than"]
    assert ok.success and len(drift) == 1 and drift[0].observed < 0.01
    skewed = tmp_path / "skewed"
    skewed.mkdir()
    (skewed / "summary.json").write_text(json.dumps({"label_counts": {"negative": 900, "neutral": 50, "positive": 50}}))
    with pytest.raises(DataError, match=r"expect_column_kl_divergence_to_be_less_than\(label\) observed 0\.\d+"):
        validate_snapshot(out, p.validate_, tmp_path / "v2", previous_dir=skewed)
    # a previous version with other labels (say, an NER snapshot) is not comparable: noted, not failed
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"label_counts": {"B-ORG": 3, "O": 90}}))
    report = validate_snapshot(out, p.validate_, tmp_path / "v3", previous_dir=other)
    assert report.success and "other labels" in " ".join(report.notes)


def test_markup_and_boilerplate_share_are_bounded():
    # markup: three tags and two character entities (each of the two markup patterns counts)
    rows = (["Shares rose after the results"] * 90 + ["<div class='x'>Shares fell</div>"] * 3 + ["AT&amp;T shares fell"] * 2
            + ["Page 3 of 12 -- all rights reserved"] * 5)
    corpus = pd.DataFrame({"id": [f"c{i}" for i in range(100)], "text": rows})
    strict = validate_frames({"corpus": corpus}, ValidateParams(min_corpus_rows=1, max_markup_share=0.02, max_boilerplate_share=0.02))
    failed = {f.expectation: f.observed for f in strict.failures}
    assert failed == {"expect_column_values_to_not_hold_markup": "5.00% unexpected",
                      "expect_column_values_to_not_match_regex_list": "5.00% unexpected"}
    lenient = validate_frames({"corpus": corpus}, ValidateParams(min_corpus_rows=1, max_markup_share=0.1, max_boilerplate_share=0.1))
    assert lenient.success


def test_a_mostly_quarantined_source_fails_validation(ingested, tmp_path):
    """A wrong label spelling or column quarantines most of a source; the run used to train on the rest."""
    import json
    import shutil

    out, _, p = ingested
    snap = tmp_path / "snap"
    shutil.copytree(out, snap)
    summary = json.loads((snap / "summary.json").read_text())
    name = next(iter(summary["sources"]))
    c = summary["sources"][name]
    c["quarantined"], c["kept"] = c["rows_in"] - c["duplicates"] - 3, 3
    (snap / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataError, match=rf"source '{name}': \d+ of \d+ rows quarantined .*max_quarantine_share 0.5"):
        validate_snapshot(snap, p.validate_, tmp_path / "v")
    assert validate_snapshot(snap, p.validate_.model_copy(update={"max_quarantine_share": 1.0}), tmp_path / "v2").success


def test_the_boilerplate_patterns_as_one_alternation_count_the_rows_any_of_them_counts():
    """GX scans the column once for the alternation; a row counts where any pattern matches, in pandas' Arrow
    (RE2) path and in Python's re alike; patterns that cannot be one alternation stay a list."""
    import random
    import re

    from lmops.tasks.validate import any_of

    patterns = ValidateParams().boilerplate_patterns + [r"(?s)a.b", r"^[0-9]{3}\Z"]
    (combined,) = any_of(patterns)
    words = ["table", "of", "contents", "Page", "3", "12", "ALL", "Rights", "reserved", "click", "here", "a", "\n", "b",
             "123", "cookie", "policy", "Cookie", "Settings", "é", "x"]
    rnd = random.Random(0)
    texts = ["123", "123\n", "Page 3 of 12", "page 3 of 12x", "a\nb"] + [" ".join(rnd.choices(words, k=rnd.randint(1, 8))) for _ in range(3000)]
    expected = [any(re.search(p, t) for p in patterns) for t in texts]
    assert 100 < sum(expected) < 2900
    assert [re.search(combined, t) is not None for t in texts] == expected
    arrow = pd.Series(texts, dtype="string[pyarrow]")
    assert arrow.str.contains(combined).tolist() == expected
    assert any_of([r"(a)\1", "b"]) == [r"(a)\1", "b"] and any_of(["(?P<x>a)", "(?P<x>b)"]) == ["(?P<x>a)", "(?P<x>b)"]
