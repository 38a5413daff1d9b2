import json
from pathlib import Path

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


def test_a_split_seed_keeps_the_splits_when_the_training_seed_changes(ingested, tmp_path, monkeypatch):
    """Seeds compared or ensembled are scored on one test split only if ingest.split_seed holds it still."""
    from lmops.config import params_from_dict
    from lmops.layout import RunLayout
    from lmops.tasks import stages

    from conftest import tiny_params_dict

    monkeypatch.setenv("LMOPS_HOME", str(tmp_path / "home"))
    out, _, p = ingested
    ids = lambda run: pd.read_parquet(run.data.split("test"))["id"].tolist()  # noqa: E731
    reference = pd.read_parquet(out / "test.parquet")["id"].tolist()

    def run_with(name, **project_and_ingest):
        d = tiny_params_dict()
        d["project"] = {**d.get("project", {}), "seed": project_and_ingest.get("seed", p.project.seed)}
        if "split_seed" in project_and_ingest:
            d["ingest"]["split_seed"] = project_and_ingest["split_seed"]
        run = RunLayout(tmp_path / name)
        stages.ingest(params_from_dict(d), run)
        return ids(run)

    other_seed = p.project.seed + 1
    assert run_with("default", seed=other_seed) != reference  # unset, the split follows the training seed (as before)
    assert run_with("held", seed=other_seed, split_seed=p.project.seed) == reference
    assert run_with("moved", split_seed=other_seed) != reference


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


def _quarantine(tmp_path):
    return pd.read_parquet(tmp_path / "out" / "quarantine.parquet")


def test_hostile_rows_are_quarantined_not_fatal(tmp_path):
    """Each of these aborted the whole ingest (exit 1, no counts): a CSV field over the csv module's size limit,
    a lone surrogate escaped in JSONL, a .gz that is not gzip, a gzip cut short. Now each is one counted
    quarantine record naming its file and row, and the good rows around it are kept."""
    import gzip

    rows = _ok_rows()
    big = "Huge " + "x" * 200_000
    csv_path = tmp_path / "big.csv"
    csv_path.write_text("text,label\n" + "\n".join(rows[:20] + [f'"{big}",1'] + rows[20:]) + "\n")
    jsonl = tmp_path / "surrogate.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": f"Company {i} posts strong earnings growth", "label": 1}) for i in range(5)]
                               + ['{"text": "Bad half pair \\ud800 in the headline", "label": 1}']) + "\n")
    fake_gz = tmp_path / "notgzip.jsonl.gz"
    fake_gz.write_bytes(b"this is plain text pretending to be gzip\n" * 10)
    cut = tmp_path / "truncated.jsonl.gz"
    full = gzip.compress("".join(json.dumps({"text": f"Bank {i} raises its dividend again", "label": 1}) + "\n" for i in range(2000)).encode())
    cut.write_bytes(full[: len(full) // 2])
    lm = {"0": "negative", "1": "positive", "2": "neutral"}
    sources = [SourceParams(name="big", role="labeled", format="csv", path=str(csv_path), label_map=lm)] + [
        SourceParams(name=p.name.split(".")[0], role="labeled", format="jsonl", path=str(p), label_map=lm) for p in (jsonl, fake_gz, cut)]
    summary = ingest(_params(*sources), LABELS, tmp_path / "out", 0)
    _check_invariant(summary)
    q = _quarantine(tmp_path)
    by = {s: " | ".join(q[q["source"] == s]["reason"]) for s in ("big", "surrogate", "notgzip", "truncated")}
    assert summary.sources["big"].kept == 40 and "field larger than field limit" in by["big"]
    assert q[q["source"] == "big"]["row"].tolist() == [21]
    assert summary.sources["surrogate"].kept == 5 and "lone surrogate" in by["surrogate"]
    assert summary.sources["notgzip"].kept == 0 and "BadGzipFile" in by["notgzip"]
    assert 0 < summary.sources["truncated"].kept < 2000 and "unreadable from row" in by["truncated"]


def test_sentfin_parser_is_linear_on_hostile_input():
    """The old regex retried a lazy match from every comma: 8,000 commas took 4 s, 64,000 would take minutes."""
    import time

    raw = "{" + ",".join(["'a'"] * 20_000)
    start = time.perf_counter()
    with pytest.raises(ValueError):
        parse_sentfin_decisions(raw)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ValueError, match="characters long"):
        parse_sentfin_decisions("{'a': 'positive', " * 20_000)


def test_float_and_case_variant_labels_are_read_as_labels(tmp_path):
    """Integer labels in a Parquet column with a missing value load as floats (1.0); labels may differ only by
    case ("Positive"). Both used to quarantine the whole source."""
    frame = pd.DataFrame({"text": [f"Firm {i} beats its quarterly profit forecast" for i in range(30)],
                          "label": [float(i % 3) for i in range(29)] + [None]})
    frame.to_parquet(tmp_path / "floats.parquet")
    cased = tmp_path / "cased.csv"
    cased.write_text("text,label\n" + "\n".join(f"Lender {i} cuts its outlook for the year,{['Negative', 'POSITIVE', 'Neutral'][i % 3]}"
                                                for i in range(30)) + "\n")
    lm = {"0": "negative", "1": "positive", "2": "neutral"}
    summary = ingest(_params(SourceParams(name="floats", role="labeled", format="parquet", path=str(tmp_path / "floats.parquet"), label_map=lm),
                             SourceParams(name="cased", role="labeled", format="csv", path=str(cased))), LABELS, tmp_path / "out", 0)
    assert (summary.sources["floats"].kept, summary.sources["floats"].quarantined) == (29, 1)
    assert summary.sources["cased"].kept == 30
    assert summary.label_counts == {"negative": 20, "neutral": 19, "positive": 20}


def test_text_dir_does_not_follow_links_out_of_its_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("The Committee decided to keep the target range unchanged this month.")
    secret = tmp_path / "secret.txt"
    secret.write_text("Private notes that must never be ingested, versioned or pushed anywhere.")
    (docs / "leak.txt").symlink_to(secret)
    (docs / "inner.txt").symlink_to(docs / "good.txt")  # a link inside the folder is fine
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "more.txt").write_text("More private text outside the source folder, also never read.")
    (docs / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    corpus = SourceParams(name="docs", role="unlabeled", format="text_dir", path=str(docs))
    summary = ingest(_params(_labeled_csv(tmp_path / "lab.csv", _ok_rows()), corpus), LABELS, tmp_path / "out", 0)
    _check_invariant(summary)
    text = " ".join(pd.read_parquet(tmp_path / "out" / "corpus.parquet")["text"])
    assert "Private" not in text
    q = _quarantine(tmp_path)
    assert q[q["source"] == "docs"]["reason"].str.contains("outside the source folder").sum() >= 1


def _read_jsonl_as_text(src):
    """The JSON Lines reader as it was before orjson: text mode, then json. The definition the fast one keeps."""
    from lmops.config import raw_label
    from lmops.tasks.readers import Rejected, Row, _open_text

    path = Path(src.path)
    with _open_text(path) as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                yield Rejected(str(path), i, "empty line")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Rejected(str(path), i, f"invalid JSON: {exc.msg}", line[:200])
                continue
            fields = src.text_columns or [src.text_column]
            if not isinstance(rec, dict) or not any(isinstance(rec.get(f), str) for f in fields):
                yield Rejected(str(path), i, f"no string field among {fields}", line[:200])
                continue
            text = "\n\n".join(rec[f] for f in fields if isinstance(rec.get(f), str) and rec[f].strip())
            label = rec.get(src.label_column) if src.role == "labeled" and src.label_column else None
            yield Row(text, str(path), i, label=raw_label(label))


def test_json_lines_read_from_bytes_are_read_as_text_and_json_read_them(tmp_path):
    """orjson parses JSON Lines from the raw bytes; every line must come out as the text-mode json reader made it:
    the same rows, numbers, labels, reasons and quoted lines, whatever the line holds."""
    import gzip

    from lmops.tasks.readers import READERS

    lines = [
        b'{"text": "Plain headline one", "label": "positive"}',
        b'{"text": "Windows line end", "label": 1}\r',  # (+ the \n below: \r\n)
        b'{"text": "lone CR ends a line", "label": 2}\r{"text": "after the lone CR", "label": 0}',
        b"", b"   \t", b"\xc2\xa0\xe3\x80\x80",  # blank, whitespace, Unicode spaces only
        b'{"text": "big int label", "label": 123456789012345678901234567890}',
        b'{"text": "float label", "label": 1.0}', b'{"text": "nested label", "label": [1, {"a": 2}]}',
        b'{"text": "infinite label", "label": 1e400}', b'{"text": "NaN label", "label": NaN}',
        b'{"text": "half pair \\ud800 escaped", "label": 1}', b'{"text": "caf\xe9 latin-1 byte", "label": 1}',
        b'{"text": "duplicate keys", "text": "second wins", "label": 0}', b'{"text": 5, "label": 0}', b'[1, 2]', b'"just a string"',
        b'{"text": "control \x01 char", "label": 0}', b'{"text": "truncated', b"\xff\xfe garbage \x00\x01",
        b'{"text": "\xe2\x80\x99curly\xe2\x80\x9d and \\u00e9 escaped", "label": "Neutral"}', b'{"other": "no text field"}',
        b'  {"text": "padded", "label": 0}  ', b'{"text": "' + b"x" * 300 + b'", "label": 0} trailing',
    ]
    body = b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n" + b'{"text": "last line without a line end", "label": 0}'
    for name, write in (("plain.jsonl", lambda p: p.write_bytes(body)), ("packed.jsonl.gz", lambda p: p.write_bytes(gzip.compress(body)))):
        path = tmp_path / name
        write(path)
        for role, label_column in (("labeled", "label"), ("unlabeled", None)):
            src = SourceParams(name="s", role=role, format="jsonl", path=str(path), label_column=label_column or "label")
            fast, reference = list(READERS["jsonl"](src)), list(_read_jsonl_as_text(src))
            assert len(fast) == len(reference) == len(lines) + 2
            for a, b in zip(fast, reference):
                assert a == b
