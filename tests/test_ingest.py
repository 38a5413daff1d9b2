import json

import pandas as pd
import pytest

from lmops.config import IngestParams, SourceParams
from lmops.errors import UserError
from lmops.tasks.ingest import chunk_text, ingest
from lmops.tasks.readers import parse_sentfin_decisions
from lmops.text import normalize_text

LABELS = ["negative", "neutral", "positive"]


def _params(*sources, **kw):
    return IngestParams(sources=list(sources), **kw)


def _labeled_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return SourceParams(name=path.stem, role="labeled", format="csv", path=str(path),
                        label_map={"0": "negative", "1": "positive", "2": "neutral"})


def _ok_rows(n=40):
    return [f"Company {i} reports quarterly results number {i},{i % 3}" for i in range(n)]


def _check_invariant(summary):
    for name, c in summary.sources.items():
        assert c.rows_in == c.kept + c.quarantined + c.duplicates, name


def test_sentfin_apostrophe_rows_parse():
    assert parse_sentfin_decisions("{'Sebi': 'neutral', 'Osian's Art Fund': 'neutral'}") == {"Sebi": "neutral", "Osian's Art Fund": "neutral"}
    assert parse_sentfin_decisions("{'Moody's': 'negative'}") == {"Moody's": "negative"}
    with pytest.raises(ValueError):
        parse_sentfin_decisions("not a dict")


def test_fixture_ingest_counts_splits_and_quarantine(ingested):
    out, summary, _ = ingested
    _check_invariant(summary)
    s = summary.sources["sentfin"]
    assert s.rows_in == 600 and s.quarantined > 0  # mixed-sentiment headlines are quarantined, not lost
    q = pd.read_parquet(out / "quarantine.parquet")
    assert (q["reason"].str.startswith("mixed entity sentiment")).sum() == s.quarantined
    assert set(q.columns) == {"source", "file", "row", "reason", "text"} and q["row"].min() >= 1
    parts = {n: pd.read_parquet(out / f"{n}.parquet") for n in ("train", "validation", "test")}
    assert sum(len(v) for v in parts.values()) == s.kept
    assert set(parts["test"]["label"]) == set(LABELS)  # stratified: every class in every split
    # no evaluation text leaks into the pretraining corpus
    corpus = pd.read_parquet(out / "corpus.parquet")
    assert not set(corpus["text"]) & (set(parts["test"]["text"]) | set(parts["validation"]["text"]))
    fomc = corpus[corpus["source"] == "fomc"]
    assert fomc["date"].str.match(r"\d{4}-\d{2}-\d{2}").all()
    assert not fomc["text"].str.contains("\ufeff").any()
    assert json.loads((out / "summary.json").read_text())["splits"]["test"] == len(parts["test"])


def test_split_is_seeded(ingested, tmp_path):
    out, _, p = ingested
    again = ingest(p.ingest, LABELS, tmp_path, p.project.seed)
    assert again.splits == json.loads((out / "summary.json").read_text())["splits"]
    assert pd.read_parquet(tmp_path / "test.parquet")["id"].tolist() == pd.read_parquet(out / "test.parquet")["id"].tolist()
    # and the seed is what decides it: another seed gives another test split
    other = ingest(p.ingest, LABELS, tmp_path / "other", p.project.seed + 1)
    assert other.splits == again.splits
    assert pd.read_parquet(tmp_path / "other" / "test.parquet")["id"].tolist() != pd.read_parquet(out / "test.parquet")["id"].tolist()


def test_bad_csv_rows_are_quarantined_with_reasons(tmp_path):
    rows = _ok_rows() + [
        "Short,1",  # too short after normalization? 5 chars < 8
        "Great results lift the shares higher,7",  # unknown label
        '"Too, many, fields",1,extra',  # malformed line
        "Company 1 reports quarterly results number 1,1",  # duplicate of an earlier row
    ]
    src = _labeled_csv(tmp_path / "news.csv", rows)
    summary = ingest(_params(src), LABELS, tmp_path / "out", 0)
    _check_invariant(summary)
    c = summary.sources["news"]
    assert (c.rows_in, c.quarantined, c.duplicates) == (44, 3, 1)
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    reasons = " | ".join(q["reason"])
    assert "shorter than ingest.min_chars" in reasons and "unknown label '7'" in reasons and "malformed CSV line" in reasons
    assert q.set_index("reason")["row"].to_dict()[q["reason"][q["reason"].str.startswith("unknown")].iloc[0]] == 42


def test_latin1_file_rows_are_quarantined(tmp_path):
    path = tmp_path / "latin.csv"
    body = "text,label\n" + "\n".join(_ok_rows()) + "\nSoci\xe9t\xe9 G\xe9n\xe9rale shares jump,1\n"
    path.write_bytes(body.encode("latin-1"))
    src = SourceParams(name="latin", role="labeled", format="csv", path=str(path), label_map={"0": "negative", "1": "positive", "2": "neutral"})
    summary = ingest(_params(src), LABELS, tmp_path / "out", 0)
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert summary.sources["latin"].quarantined == 1 and "not UTF-8" in q["reason"].iloc[0]


def test_missing_text_column_names_file_and_fix(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("headline,label\nfoo bar baz qux,1\n")
    src = SourceParams(name="news", role="labeled", format="csv", path=str(path))
    with pytest.raises(UserError, match=r"news\.csv.*\['text'\] not found.*text_column"):
        ingest(_params(src), LABELS, tmp_path / "out", 0)


def test_missing_file_is_a_user_error(tmp_path):
    src = SourceParams(name="gone", role="labeled", format="csv", path=str(tmp_path / "gone.csv"))
    with pytest.raises(UserError, match="does not exist"):
        ingest(_params(src), LABELS, tmp_path / "out", 0)


def test_empty_and_binary_documents_in_a_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_text("")
    (docs / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    (docs / "good.txt").write_text("\ufeffThe Committee decided to keep the target range unchanged.\n\nInflation remains elevated.")
    corpus = SourceParams(name="docs", role="unlabeled", format="text_dir", path=str(docs))
    labeled = _labeled_csv(tmp_path / "lab.csv", _ok_rows())
    summary = ingest(_params(labeled, corpus), LABELS, tmp_path / "out", 0)
    _check_invariant(summary)
    assert summary.sources["docs"].kept == 1 and summary.sources["docs"].quarantined == 2


def test_normalize_and_chunk():
    assert normalize_text("\ufeffCaf\u0065\u0301  rises\x00 today\r\n\r\n\r\nNext  para") == "Café rises today\n\nNext para"
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    chunks = chunk_text(text, 300)
    assert all(len(c) <= 300 for c in chunks) and " ".join(chunks) == text
    assert all(c.endswith(".") for c in chunks)  # cut on sentence boundaries


def test_invisible_characters_cannot_hide_a_copy_of_a_test_row(tmp_path):
    """A zero-width space or soft hyphen inside a copied headline makes it a different string to every hash;
    normalization removes them, so the copy is a duplicate, and a copy in the corpus is caught as leakage."""
    rows = [f"Company {i} reports quarterly results above estimates" for i in range(40)]
    labeled = tmp_path / "labeled.csv"
    sneaky = rows[0].replace(" ", "\u200b ", 1).replace("quarterly", "quar\u00adterly")
    labeled.write_text("text,label\n" + "\n".join(f"{t},positive" for t in rows) + f"\n{sneaky},positive\n")
    summary = ingest(_params(SourceParams(name="l", role="labeled", format="csv", path=str(labeled))), LABELS, tmp_path / "out", 0)
    assert summary.sources["l"].duplicates == 1 and summary.sources["l"].kept == 40
    assert normalize_text("Tata\u200b Motors\u2060 up\u00ad\ufeff") == "Tata Motors up"
