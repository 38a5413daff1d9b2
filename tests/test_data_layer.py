"""Adapters for the real sets, more formats, near-duplicates, data versions."""

import gzip
import json

import pandas as pd
import yaml

from lmops.config import IngestParams, SourceParams
from lmops.tasks.ingest import ingest
from tests.conftest import FIXTURES, run_cli

LABELS = ["negative", "neutral", "positive"]
SENTFIN = SourceParams(name="sentfin", role="labeled", format="sentfin", path=str(FIXTURES / "sentfin_sample.csv"))


def _run(tmp_path, *sources, **kw):
    summary = ingest(IngestParams(sources=[SENTFIN, *sources], **kw), LABELS, tmp_path / "out", 0)
    for name, c in summary.sources.items():
        assert c.rows_in == c.kept + c.quarantined + c.duplicates, name
    return summary, tmp_path / "out"


def test_twitter_csv_with_numeric_label_map(tmp_path):
    tw = SourceParams(name="twitter", role="labeled", format="csv", path=str(FIXTURES / "twitter_sample.csv"),
                      label_map={"0": "negative", "1": "positive", "2": "neutral"})
    summary, out = _run(tmp_path, tw)
    assert summary.sources["twitter"].rows_in == 150 and summary.sources["twitter"].kept > 140
    labeled = pd.concat(pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test"))
    tweets = labeled[labeled["source"] == "twitter"]
    assert set(tweets["label"]) == set(LABELS)
    # every kept tweet carries the mapped value of its own raw label (a swapped map would fail here)
    raw = pd.read_csv(FIXTURES / "twitter_sample.csv", dtype=str)
    mapping = {"0": "negative", "1": "positive", "2": "neutral"}
    row = tweets["id"].str.split(":").str[1].astype(int)  # 1-based data row
    assert tweets["label"].tolist() == [mapping[raw["label"].iloc[r - 1]] for r in row]
    # the map as YAML reads it unquoted ({0: negative}: integer keys) is the same map
    unquoted = yaml.safe_load("{name: twitter, role: labeled, format: csv, path: x, label_map: {0: negative, 1: positive, 2.0: neutral}}")
    assert SourceParams(**unquoted).label_map == mapping


def test_10k_jsonl_joins_item_fields_and_quarantines_bad_json(tmp_path):
    k = SourceParams(name="10k", role="unlabeled", format="jsonl", path=str(FIXTURES / "sec10k_sample.jsonl"),
                     text_columns=["item1", "item1a", "item7", "item7a"])
    summary, out = _run(tmp_path, k, chunk_chars=1000)
    c = summary.sources["10k"]
    assert (c.rows_in, c.quarantined) == (5, 1)
    q = pd.read_parquet(out / "quarantine.parquet")
    assert q[q["source"] == "10k"]["reason"].str.startswith("invalid JSON").all() and q[q["source"] == "10k"]["row"].tolist() == [5]
    corpus = pd.read_parquet(out / "corpus.parquet")
    chunks = corpus[corpus["source"] == "10k"]
    assert len(chunks) > 4 and chunks["text"].str.len().max() <= 1000


def test_gzip_tsv_and_text_lines(tmp_path):
    tsv = tmp_path / "news.tsv.gz"
    with gzip.open(tsv, "wt") as fh:
        fh.write("text\tlabel\n" + "\n".join(f"Quarterly profit of firm {i} beats estimates\tpositive" for i in range(20)) + "\n")
    lines = tmp_path / "corpus.txt"
    lines.write_text("Rates were left unchanged by the committee today.\n\nInflation expectations remain anchored firmly.\nx\n")
    summary, _ = _run(tmp_path, SourceParams(name="tsv", role="labeled", format="csv", path=str(tsv)),
                      SourceParams(name="lines", role="unlabeled", format="text_lines", path=str(lines)))
    assert summary.sources["tsv"].kept == 20
    assert (summary.sources["lines"].kept, summary.sources["lines"].quarantined) == (2, 2)  # empty line + "x"


def test_near_duplicates_are_counted_not_kept(tmp_path):
    base = ("The Committee decided today to keep its target for the federal funds rate at 6 percent. Recent data suggest that "
            "the expansion of economic activity has moderated, and the Committee believes that the risks are weighted mainly "
            "toward conditions that may generate heightened inflation pressures in the foreseeable future, so it will monitor")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(base + ".")
    (docs / "b.txt").write_text(base + " closely.")  # one word more: near duplicate (Jaccard ≈ 0.98)
    (docs / "c.txt").write_text("Oil prices climbed in Asian trading as supply worries outweighed demand concerns this week.")
    summary, _ = _run(tmp_path, SourceParams(name="docs", role="unlabeled", format="text_dir", path=str(docs)))
    c = summary.sources["docs"]
    assert (c.kept, c.duplicates, c.near_duplicates) == (2, 1, 1)


def test_a_single_10mb_line_is_chunked_not_lost(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(("Growth slowed. " * 700_000).strip() + "\n")
    summary, out = _run(tmp_path, SourceParams(name="big", role="unlabeled", format="text_lines", path=str(big)),
                        chunk_chars=4000, near_duplicate_threshold=None)
    assert summary.sources["big"].kept == 1
    corpus = pd.read_parquet(out / "corpus.parquet")
    chunks = corpus[corpus["source"] == "big"]
    chunks = chunks.assign(k=chunks["id"].str.rsplit(":", n=1).str[1].astype(int)).sort_values("k")
    assert len(chunks) > 2000 and chunks["text"].str.len().max() <= 4000
    # nothing lost or reordered: the chunks put back together are the line, but for the spaces at the cuts
    assert "".join(chunks["text"]).replace(" ", "") == big.read_text().strip().replace(" ", "")


def test_data_versions_and_checkout(project, lmops_home, ingested, tmp_path):
    from lmops.tasks.version import snapshot

    data, _, _ = ingested
    v1 = snapshot(project, data, lmops_home / "remote").md5
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in data.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    pd.read_parquet(data / "train.parquet").head(5).to_parquet(changed / "train.parquet", index=False)
    v2 = snapshot(project, changed, lmops_home / "remote").md5
    env = {"LMOPS_HOME": str(lmops_home)}
    listed = json.loads(run_cli("data", "versions", "--json", cwd=project, env=env).stdout.splitlines()[-1])
    assert [v["md5"] for v in listed] == [v1, v2] and listed[0]["splits"]["train"] > 5
    r = run_cli("data", "checkout", v1[:10], "--json", cwd=project, env=env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(project / "data" / "train.parquet")) == listed[0]["splits"]["train"]
    assert run_cli("data", "checkout", "ffff", cwd=project, env=env).returncode == 2
