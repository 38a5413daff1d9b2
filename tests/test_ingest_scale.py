"""Ingest at scale: boilerplate removal, batches spilled to disk, the duplicate decision from arrays, a Dask cluster.

The streaming path is the only path, so every other ingest test runs through it too; these pin what is new: the
output does not depend on how the input is cut into batches or where they run, and page furniture goes."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, tiny_params_dict

from lmops.config import ConfigError, EngineParams, IngestParams, SourceParams, ValidateParams, params_from_dict
from lmops.tasks import ingest as ingest_mod
from lmops.tasks.dedup import MinHasher, band_hashes, exact_keys, resolve
from lmops.tasks.ingest import ingest, ingest_corpus_only

SNAPSHOT = ["train.parquet", "validation.parquet", "test.parquet", "corpus.parquet", "quarantine.parquet", "summary.json"]

PAGE = "We sell products in {n} countries and expect growth to continue in the coming years as markets expand."


def _filing(pages: int = 6) -> str:
    """A 10-K item as EDGAR's HTML-to-text leaves it: page numbers, "Table of Contents" links and a running header
    at every page break, a table whose "Total" repeats, and a sentence wrapped around a lone "and"."""
    parts = []
    for n in range(1, pages + 1):
        parts += [PAGE.format(n=n), "Total", "Revenue grew in segment", "and", f"margin improved {n}.", f"{n}", "\u200b",
                  "Table of Contents", "ACME HOLDINGS INC. 2023 FORM 10-K"]
    return "\n".join(parts)


def test_page_furniture_goes_and_prose_stays(tmp_path):
    src = tmp_path / "filings.jsonl"
    src.write_text(json.dumps({"text": _filing()}) + "\n")
    corpus, summary = ingest_corpus_only(IngestParams(sources=[SourceParams(name="10k", role="unlabeled", format="jsonl", path=str(src))]),
                                         tmp_path / "out")
    text = " ".join(corpus["text"])
    assert "Table of Contents" not in text and "ACME HOLDINGS" not in text
    # 6 page numbers + 6 links + 6 headers; the table's "Total" and the wrapped "and" repeat as often, away from page breaks
    assert summary.sources["10k"].boilerplate_lines == 18
    assert text.count("Total") == 6 and "Revenue grew in segment and margin improved 3." in text
    off = IngestParams(sources=[SourceParams(name="10k", role="unlabeled", format="jsonl", path=str(src))],
                       boilerplate={"line_patterns": [], "repeated_line_min": 0})
    raw, raw_summary = ingest_corpus_only(off, tmp_path / "off")
    assert raw_summary.sources["10k"].boilerplate_lines == 0 and " ".join(raw["text"]).count("Table of Contents") == 6


def test_the_10k_sample_passes_the_boilerplate_expectation_only_with_page_furniture_removed(tmp_path):
    from lmops.tasks.validate import validate_frames

    src = SourceParams(name="10k", role="unlabeled", format="jsonl", path=str(FIXTURES / "sec10k_sample.jsonl"),
                       text_columns=["item1", "item1a", "item7", "item7a"])
    p = ValidateParams(min_corpus_rows=1, max_boilerplate_share=0.0)  # not one chunk with boilerplate
    for params, passes in ((IngestParams(sources=[src], chunk_chars=300, boilerplate={"line_patterns": [], "repeated_line_min": 0}), False),
                           (IngestParams(sources=[src], chunk_chars=300), True)):
        corpus, _ = ingest_corpus_only(params, tmp_path / str(passes))
        outcome = {o.expectation: o.success for o in validate_frames({"corpus": corpus}, p).outcomes}
        assert outcome["expect_column_values_to_not_match_regex_list"] is passes


def test_a_bad_boilerplate_pattern_names_its_key():
    with pytest.raises(ConfigError) as err:
        params_from_dict(tiny_params_dict(ingest={"boilerplate": {"line_patterns": ["ok", "(unclosed"]}}))
    assert "ingest.boilerplate.line_patterns" in str(err.value) and "[1] '(unclosed'" in str(err.value)


def _snapshot(path):
    return {name: (path / name).read_bytes() for name in SNAPSHOT}


def test_the_snapshot_does_not_depend_on_how_the_sources_are_cut_into_batches(tmp_path, monkeypatch):
    """One batch, or a batch per 3 records, cleaned by one thread or several, held in memory between the passes or
    spilled, with every Parquet output flushed a row group at a time: the same rows, the same counts; and byte for
    byte the same files where the output fits one buffer (the data version)."""
    p = params_from_dict(tiny_params_dict())
    ingest(p.ingest, p.validate_.labels, tmp_path / "one", p.project.seed)
    for name, update in (("small", {"batch_rows": 3}), ("spilled", {"batch_rows": 3, "hold_chars": 0, "engine": EngineParams(threads=1)}),
                         ("threads", {"batch_rows": 7, "hold_chars": 2000, "engine": EngineParams(threads=3)})):
        ingest(p.ingest.model_copy(update=update), p.validate_.labels, tmp_path / name, p.project.seed)
        assert _snapshot(tmp_path / "one") == _snapshot(tmp_path / name), name

    monkeypatch.setattr(ingest_mod, "SINK_ROWS", 5)
    ingest(p.ingest.model_copy(update={"batch_rows": 3}), p.validate_.labels, tmp_path / "flushed", p.project.seed)
    assert pq.ParquetFile(tmp_path / "flushed" / "corpus.parquet").num_row_groups > 2
    for name in ("corpus.parquet", "quarantine.parquet"):
        a, b = pd.read_parquet(tmp_path / "one" / name), pd.read_parquet(tmp_path / "flushed" / name)
        pd.testing.assert_frame_equal(a.astype(b.dtypes.to_dict()), b)
    assert (tmp_path / "one" / "summary.json").read_text() == (tmp_path / "flushed" / "summary.json").read_text()
    assert not [p for p in tmp_path.iterdir() if ".ingest-" in p.name], "the spill folders are removed"


def _sequential(docs: list[str], roles: list[str], threshold: float) -> tuple[list[bool], list[bool]]:
    """The one-document-at-a-time decision ingest made before it spilled: an LSH index of the kept documents."""
    hasher, seen, buckets, sigs = MinHasher(), set(), {}, []
    exact, near = [], []
    for doc, role in zip(docs, roles):
        key = (role, " ".join(doc.lower().split()))
        if key in seen:
            exact.append(True), near.append(False)
            continue
        seen.add(key)
        exact.append(False)
        if len(doc.split()) < 8:
            near.append(False)
            continue
        sig = hasher.signature(doc)
        keys = [(role, b, sig[b * 4 : (b + 1) * 4].tobytes()) for b in range(16)]
        if any(float(np.mean(sigs[i] == sig)) >= threshold for i in {i for k in keys for i in buckets.get(k, [])}):
            near.append(True)
            continue
        near.append(False)
        for k in keys:
            buckets.setdefault(k, []).append(len(sigs))
        sigs.append(sig)
    return exact, near


def test_the_duplicate_decision_from_arrays_is_the_sequential_one():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab, 300)) for _ in range(120)]
    docs, roles = [], []
    for i in range(600):
        doc = base[rng.integers(len(base))].split()
        for _ in range(int(rng.integers(0, 9))):  # 0-8 words changed: some copies reach 0.9, some do not
            doc[rng.integers(len(doc))] = str(rng.choice(vocab))
        text = " ".join(doc) if i % 7 else " ".join(doc).upper()  # a case change is an exact duplicate
        docs.append(text if i % 11 else "too short to sign")
        roles.append("labeled" if i % 5 == 0 else "unlabeled")
    hasher = MinHasher()
    sigs, has = hasher.signatures(docs)
    codes = np.array([1 if r == "labeled" else 2 for r in roles], dtype=np.uint8)
    keys = np.concatenate([exact_keys(r, [d]) for r, d in zip(roles, docs)])
    found = resolve(keys, codes, has, band_hashes(sigs), sigs, 0.9)
    exact, near = _sequential(docs, roles, 0.9)
    assert found["exact"].tolist() == exact and found["near"].tolist() == near
    assert sum(near) > 50 and sum(exact) > 50 and sum(not e and not n for e, n in zip(exact, near)) > 50


@pytest.fixture
def dask_engine():
    return EngineParams(kind="dask", workers=2)


def test_a_dask_cluster_makes_the_same_snapshot_as_this_process(tmp_path, dask_engine):
    p = params_from_dict(tiny_params_dict())
    ingest(p.ingest, p.validate_.labels, tmp_path / "local", p.project.seed)
    on_dask = p.ingest.model_copy(update={"engine": dask_engine, "batch_rows": 25})
    summary = ingest(on_dask, p.validate_.labels, tmp_path / "dask", p.project.seed)
    assert _snapshot(tmp_path / "local") == _snapshot(tmp_path / "dask")
    assert summary.sources["sentfin"].rows_in == 600


def test_bad_input_on_a_dask_cluster_is_quarantined_with_reasons(tmp_path, dask_engine):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"text": "A valid filing paragraph about revenue and margins."}\n'
                       b'{not json\n'
                       b'\n'
                       b'{"text": "caf\xe9 latin-1 bytes here in this line"}\n'
                       b'{"other": 1}\n'
                       + json.dumps({"text": "x" * (10 * 2**20)}).encode() + b"\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    params = IngestParams(sources=[SourceParams(name="c", role="unlabeled", format="jsonl", path=str(corpus)),
                                   SourceParams(name="e", role="unlabeled", format="jsonl", path=str(empty))],
                          engine=dask_engine, batch_rows=2)
    frame, summary = ingest_corpus_only(params, tmp_path / "out")
    c = summary.sources["c"]
    assert (c.rows_in, c.kept, c.quarantined) == (6, 2, 4) and summary.sources["e"].rows_in == 0
    reasons = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")["reason"].tolist()
    assert [r.split(":")[0].split(" (")[0] for r in reasons] == ["invalid JSON", "empty line", "undecodable bytes", "no string field among ['text']"]
    assert frame["text"].str.len().sum() >= 10 * 2**20, "the 10 MB line is chunked, not lost"


def test_a_caller_that_needs_only_the_file_is_not_handed_the_corpus_back(tmp_path):
    from lmops.errors import DataError
    from lmops.tasks.evaluate import load_text_file

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Revenue of segment {i} rose on demand."}) + "\n" for i in range(7)))
    frame, summary = ingest_corpus_only(IngestParams(sources=[SourceParams(name="c", role="unlabeled", format="jsonl", path=str(corpus))]),
                                        tmp_path / "out", read_back=False)
    assert frame is None and summary.corpus_rows == 7 == len(pd.read_parquet(tmp_path / "out" / "corpus.parquet"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\t\n")
    with pytest.raises(DataError, match="no usable text"):
        load_text_file(blank, tmp_path / "blank")


@pytest.mark.slow
def test_a_corpus_much_larger_than_the_batches_ingests_in_bounded_memory(tmp_path):
    """A 300 MB corpus (planted near-duplicates among re-sampled 10-K/FOMC sentences) in a child process: peak
    RSS stays far below the text it holds, and the planted pairs are found."""
    data = tmp_path / "gen"
    subprocess.run([sys.executable, "benchmarks/make_corpus.py", "--mb", "300", "--out", str(data)], check=True, cwd=ingest_mod.__file__.rsplit("/tasks/", 1)[0])
    out = subprocess.run([sys.executable, "benchmarks/ingest_scale.py", "--data", str(data), "--workers", "1", "--json"],
                         check=True, capture_output=True, text=True, cwd=ingest_mod.__file__.rsplit("/tasks/", 1)[0],
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_rss_mb"] < 900, result
    assert result["near_duplicates"]["recall"] >= 0.95 and result["near_duplicates"]["precision"] >= 0.95, result


def _corpus_frame(n: int = 50):
    text = [f"Quarterly revenue of company {i} rose on strong demand across its segments." for i in range(n)]
    text[5] = "Table of Contents Quarterly revenue rose."  # boilerplate in 2 of 50 rows: within 0.05
    text[30] = "See the table of contents for details of the filing."
    ids = [f"c:{i}:0" for i in range(n)]
    ids[40] = ids[3]  # a duplicate id in different pieces
    return pd.DataFrame({"id": ids, "text": text, "source": "c", "date": None})


def test_a_corpus_validated_in_pieces_is_judged_on_all_its_rows(tmp_path):
    from lmops.tasks.validate import RowGroups, validate_frames

    frame = _corpus_frame()
    frame.to_parquet(tmp_path / "corpus.parquet", row_group_size=7)
    p = ValidateParams(min_corpus_rows=1)
    whole = validate_frames({"corpus": frame}, p)
    pieces = validate_frames({"corpus": RowGroups(tmp_path / "corpus.parquet", 7)}, p, docs_dir=tmp_path / "docs")
    assert [(o.expectation, o.success, o.observed) for o in pieces.outcomes] == [(o.expectation, o.success, o.observed) for o in whole.outcomes]
    outcome = {o.expectation: o for o in pieces.outcomes}
    assert not outcome["expect_column_values_to_be_unique"].success, "the duplicate id sits in two pieces"
    assert outcome["expect_column_values_to_not_match_regex_list"].success  # 4% boilerplate, within the 5% allowed
    assert outcome["expect_table_row_count_to_be_between"].observed == 50
    # the Data Docs page is the combined result: every row counted, the cross-piece duplicate found
    page = next((tmp_path / "docs" / "validations" / "corpus_suite" / "corpus_all_row_groups").rglob("*.html")).read_text()
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "values must be unique. 2 unexpected values found. 4% of 50 total rows" in text
    # 3 boilerplate rows of 50 (6%) fail the 0.05 share: the sums over all pieces decide, not any one piece
    frame.loc[45, "text"] = "Page 3 of 9"
    frame.to_parquet(tmp_path / "corpus.parquet", row_group_size=7)
    strict = validate_frames({"corpus": RowGroups(tmp_path / "corpus.parquet", 7)}, ValidateParams(min_corpus_rows=1, max_boilerplate_share=0.05))
    assert not {o.expectation: o for o in strict.outcomes}["expect_column_values_to_not_match_regex_list"].success


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and two single-threaded workers as separate processes (a cluster, as the team stack runs
    them), found through a scheduler file."""
    import time

    bindir = os.path.dirname(sys.executable)
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([f"{bindir}/dask", "scheduler", "--scheduler-file", str(file), "--port", "0", "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([f"{bindir}/dask", "worker", "--scheduler-file", str(file), "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def test_a_running_dask_cluster_is_used_by_its_address_and_makes_the_same_snapshot(tmp_path, dask_cluster):
    p = params_from_dict(tiny_params_dict())
    ingest(p.ingest, p.validate_.labels, tmp_path / "local", p.project.seed)
    remote = p.ingest.model_copy(update={"engine": EngineParams(kind="dask", address=dask_cluster), "batch_rows": 40})
    ingest(remote, p.validate_.labels, tmp_path / "cluster", p.project.seed)
    assert _snapshot(tmp_path / "local") == _snapshot(tmp_path / "cluster")
    from distributed import Client

    # a corpus validated in pieces: the pieces on the cluster's workers, judged as in this process (the duplicate
    # id in two pieces found, shares over all rows)
    from lmops.tasks.validate import RowGroups, validate_frames, validate_snapshot

    _corpus_frame().to_parquet(tmp_path / "corpus.parquet", row_group_size=7)
    pieces = RowGroups(tmp_path / "corpus.parquet", 4)  # pieces of 4 rows within row groups of 7
    assert [n for _, _, n in pieces.pieces()][:3] == [4, 3, 4] and sum(n for _, _, n in pieces.pieces()) == 50
    here = validate_frames({"corpus": pieces}, ValidateParams(min_corpus_rows=1))
    there = validate_frames({"corpus": pieces}, ValidateParams(min_corpus_rows=1), engine=remote.engine)
    assert [(o.expectation, o.success, o.observed) for o in there.outcomes] == [(o.expectation, o.success, o.observed) for o in here.outcomes]
    assert not {o.expectation: o for o in there.outcomes}["expect_column_values_to_be_unique"].success
    report = validate_snapshot(tmp_path / "cluster", p.validate_.model_copy(update={"corpus_batch_rows": 10}), tmp_path / "validate",
                               engine=remote.engine)
    assert report.success and any(f"on dask workers ({dask_cluster})" in n for n in report.notes), report.notes
    assert (tmp_path / "validate" / "data_docs" / "index.html").exists()
    with Client(dask_cluster) as client:  # the cluster did the work (and is still up: ingest closed only its client)
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert "clean_batch" in prefixes and "validate_piece" in prefixes
        assert len(client.scheduler_info()["workers"]) == 2


def test_signatures_estimate_the_jaccard_similarity_of_the_shingles_at_every_length():
    """One-permutation hashing with densification: agreement of two signatures estimates the 5-gram Jaccard
    similarity without bias, for 12-word headlines (most bins borrowed) as for 300-word chunks (none)."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    hasher = MinHasher()
    for n_words, changes in ((12, 1), (300, 8)):
        est, true = [], []
        for _ in range(300):
            a = list(rng.choice(vocab, n_words))
            b = a.copy()
            for _ in range(changes):
                b[rng.integers(n_words)] = str(rng.choice(vocab))
            ga, gb = ({tuple(w[i : i + 5]) for i in range(len(w) - 4)} for w in (a, b))
            true.append(len(ga & gb) / len(ga | gb))
            sigs, has = hasher.signatures([" ".join(a), " ".join(b)])
            assert has.all() and (sigs != np.iinfo(np.uint64).max).all()  # every empty bin was filled
            est.append(float((sigs[0] == sigs[1]).mean()))
        bias = np.mean(est) - np.mean(true)
        rmse = float(np.sqrt(np.mean((np.array(est) - np.array(true)) ** 2)))
        assert abs(bias) < 0.015 and rmse < 0.08, (n_words, bias, rmse)  # measured: bias -0.002 / -0.007, rmse 0.070 / 0.052
    # the batch path and the one-document path sign alike, and the same text always the same way (the kernel and its
    # Python definition are compared in test_textkernels.py)
    docs = [" ".join(rng.choice(vocab, n)) for n in (9, 40, 700)]
    assert (hasher.signatures(docs)[0] == np.stack([MinHasher().signature(d) for d in docs])).all()


def test_sentence_cuts_are_the_look_behind_split():
    import random

    from lmops.tasks.ingest import _sentences

    rnd = random.Random(0)
    for _ in range(5000):
        t = "".join(rnd.choice("ab .!?\n\t\u2003x") for _ in range(rnd.randint(0, 30)))
        assert _sentences(t) == re.split(r"(?<=[.!?])\s+", t), repr(t)


# The fast paths below replace simpler code; the simpler code is kept here as the definition they must equal.
def _reference_normalize(text: str) -> str:
    import unicodedata

    from lmops.text import without_invisible

    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", " ", without_invisible(unicodedata.normalize("NFC", text)))
    return "\n\n".join(p for p in (" ".join(p.split()) for p in re.split(r"\n\s*\n", text)) if p)


def _reference_chunks(text: str, chunk_chars: int) -> list[str]:
    if len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for para in text.split("\n\n"):
        if len(para) <= chunk_chars:
            pieces.append(para)
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para):
            pieces.extend(sent[i : i + chunk_chars] for i in range(0, len(sent), chunk_chars))
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def test_the_other_spaces_are_every_whitespace_character_the_control_class_leaves():
    from lmops.text import OTHER_SPACES

    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
    expected = {c for c in map(chr, range(0x110000)) if c.isspace() and c not in " \n" and not control.match(c)}
    assert set(OTHER_SPACES) == expected


def test_normalization_and_chunking_equal_their_simple_definitions():
    import random

    from lmops.tasks.ingest import chunk_text
    from lmops.text import OTHER_SPACES, normalize_text

    rnd = random.Random(0)
    alphabet = list("ab .!?\n\n\x00\x0b\x0c\x1c\x1f\x85\x7f\u200b\ufeffe\u0301ÉX") + list(OTHER_SPACES)
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(20_000)]
    for t in texts:
        n = normalize_text(t)
        assert n == _reference_normalize(t), repr(t)
        for size in (1, 3, 8):
            assert chunk_text(t, size) == _reference_chunks(t, size), (repr(t), size)
            assert chunk_text(n, size) == _reference_chunks(n, size), (repr(n), size)


def test_page_furniture_removal_keeps_every_other_line_in_place():
    import random

    from lmops.text import Boilerplate

    boiler = Boilerplate([r"[0-9]+", r"(?i)table of contents"], repeated_line_min=2, repeated_line_max_chars=20)
    rnd = random.Random(0)
    lines = ["12", " 7 ", "Table of Contents", "ACME CORP", "", "\u200b", "We grew.", "Revenue rose 4%.", "and"]
    for _ in range(3000):
        text = "\n".join(rnd.choice(lines) for _ in range(rnd.randint(0, 30)))
        out, removed = boiler.strip(text)
        keys = [ln.strip() for ln in text.replace("\u200b", "").split("\n")]
        drop = {i for i, k in enumerate(keys) if k and boiler._line.fullmatch(k)}
        if drop:
            near = boiler._near_breaks(keys, sorted(drop), drop)
            drop |= {i for i in near if sum(keys[j] == keys[i] for j in near) >= 2}
        assert removed == len(drop) and out == "\n".join(ln for i, ln in enumerate(text.split("\n")) if i not in drop), repr(text)


def test_the_local_engine_runs_batches_on_several_threads_and_returns_them_in_order():
    """``engine.threads`` batches at once (a barrier that only that many threads can pass), results in input order
    whatever order they finish in; an error in one batch reaches the caller."""
    import threading
    import time

    from lmops.tasks.engine import open_engine

    engine = open_engine(EngineParams(threads=3))
    barrier = threading.Barrier(3, timeout=30)

    def work(i):
        if i < 3:
            barrier.wait()  # would time out (BrokenBarrierError) unless three batches run at once
        time.sleep(0.01 * (5 - i % 5))  # later batches finish first
        return i, threading.current_thread().name

    try:
        out = list(engine.map(work, ((i,) for i in range(12))))
        assert [i for i, _ in out] == list(range(12))
        assert len({name for _, name in out}) == 3
        with pytest.raises(ZeroDivisionError):
            list(engine.map(lambda i: 1 // (i - 4), ((i,) for i in range(9))))
        # batches the caller marks inline run on its own thread, still in order among the others
        me = threading.current_thread().name
        out = list(engine.map(lambda i: (i, threading.current_thread().name), ((i,) for i in range(10)), inline=lambda a: a[0] % 3 == 0))
        assert [i for i, _ in out] == list(range(10))
        assert {i for i, name in out if name == me} == {0, 3, 6, 9}
    finally:
        engine.close()
    # ingest's rule: batches of short records stay on the reading thread (the kernels keep the GIL on short texts)
    from lmops.tasks.ingest import _short_documents
    from lmops.tasks.readers import Row
    from lmops.text import _kernels

    short, long = [Row("a" * 7500, "f", i) for i in range(4)], [Row("a" * 200_000, "f", i) for i in range(4)]
    assert _short_documents((short,)) and _short_documents((long,)) is (_kernels is None)
    assert open_engine(EngineParams(threads=0)).workers == os.cpu_count()
