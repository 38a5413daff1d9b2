"""Entity-targeted sentiment and NER: CoNLL ingest (IO → IOB2), pinned splits, sub-token label
alignment, seqeval through the local evaluate module, PEFT token classification reload."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lmops.config import params_from_dict
from lmops.errors import ConfigError
from lmops.kinds import KINDS
from lmops.kinds.base import Reading
from lmops.tasks.ingest import ingest
from lmops.tasks.readers import to_iob2
from tests.conftest import FIXTURES, run_cli, tiny_params_dict

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def ner_params(**finetune):
    return params_from_dict(tiny_params_dict(
        ingest={"sources": [
            {"name": "fin5", "role": "labeled", "format": "conll", "path": str(FIXTURES / "ner_sec" / "FIN5_sample.txt")},
            {"name": "fin3", "role": "labeled", "format": "conll", "path": str(FIXTURES / "ner_sec" / "FIN3_sample.txt"), "assign_split": "test"},
            {"name": "fomc", "role": "unlabeled", "format": "fomc", "path": str(FIXTURES / "fomc")},
        ]},
        validate={"labels": NER_LABELS, "min_labeled_rows": 20, "min_corpus_rows": 5, "text_max_chars": 5000},
        finetune={"task": "token", "max_length": 96, "epochs": 3, "lr": 3e-3, **finetune},
    ))


@pytest.mark.parametrize("tags,expected", [
    (["O", "I-ORG", "I-ORG", "O", "I-PER"], ["O", "B-ORG", "I-ORG", "O", "B-PER"]),  # IO
    (["I-ORG", "I-LOC", "I-LOC"], ["B-ORG", "B-LOC", "I-LOC"]),  # type change starts an entity
    (["B-ORG", "I-ORG", "B-ORG"], ["B-ORG", "I-ORG", "B-ORG"]),  # IOB2 stays as is
])
def test_io_tags_become_iob2(tags, expected):
    assert to_iob2(tags) == expected


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    p = ner_params()
    out = tmp_path_factory.mktemp("ner")
    return out, ingest(p.ingest, p.validate_.labels, out, p.project.seed, KINDS["token"]), p


def test_conll_ingest_pins_the_test_file_and_keeps_tags_aligned(ner_data):
    out, summary, _ = ner_data
    for name, c in summary.sources.items():
        assert c.rows_in == c.kept + c.quarantined + c.duplicates, name
    assert summary.sources["fin5"].rows_in == 160 and summary.sources["fin3"].rows_in == 60
    test = pd.read_parquet(out / "test.parquet")
    assert set(test["source"]) == {"fin3"} and len(test) == summary.sources["fin3"].kept
    train = pd.read_parquet(out / "train.parquet")
    assert set(train["source"]) == {"fin5"}
    for part in (train, test):
        assert (part["text"].str.split(" ").str.len() == part["label"].str.split(" ").str.len()).all()
    first = train[train["text"].str.startswith("This LOAN AND SECURITY AGREEMENT")].iloc[0]
    words, tags = first["text"].split(" "), first["label"].split(" ")
    assert tags[words.index("SILICON"):words.index("SILICON") + 3] == ["B-ORG", "I-ORG", "I-ORG"]
    assert summary.label_counts["B-PER"] > 0 and "I-PER" in summary.label_counts


def test_bad_conll_lines_are_quarantined_with_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Apple NNP - I-ORG\nrose VBD - O\n\nlonely\nline - O\n\nAcme NNP - I-COMPANY\n\nGood NNP - O\nsentence NN - O\n")
    p = ner_params()
    p.ingest.sources[0].path = str(bad)
    out = tmp_path / "out"
    summary = ingest(p.ingest, p.validate_.labels, out, 0, KINDS["token"])
    c = summary.sources["fin5"]
    assert (c.rows_in, c.kept, c.quarantined) == (4, 2, 2)
    q = pd.read_parquet(out / "quarantine.parquet")
    reasons = q[q["source"] == "fin5"].set_index("row")["reason"].to_dict()
    assert "line 4" in reasons[2] and "token ... tag" in reasons[2]
    assert "unknown tag(s) ['B-COMPANY']" in reasons[3]


def test_escaped_html_in_a_source_is_decoded_when_asked_and_tags_stay_aligned(tmp_path):
    """Tweets arrive HTML-escaped (WNUT17: "AT&amp;T", "&lt;3"); ``unescape_html`` decodes word by word, another
    tag set is mapped onto ours, and a word that decodes to a space is quarantined with its reason."""
    wnut = tmp_path / "wnut.conll"
    wnut.write_text("AT&amp;T\tB-corporation\nrocks\tO\n&lt;3\tO\n\nParis\tB-location\n&nbsp;\tO\n\nHi\tO\nthere\tO\n")
    p = ner_params()
    p.ingest.sources[0].path = str(wnut)
    p.ingest.sources[0].label_map = {"B-corporation": "B-ORG", "B-location": "B-LOC"}
    p.ingest.sources[0].unescape_html = True
    out = tmp_path / "out"
    summary = ingest(p.ingest, p.validate_.labels, out, 0, KINDS["token"])
    c = summary.sources["fin5"]
    assert (c.rows_in, c.kept, c.quarantined) == (3, 2, 1)
    rows = pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation")])
    first = rows[rows["source"] == "fin5"].set_index("text")["label"].to_dict()
    assert first["AT&T rocks <3"] == "B-ORG O O"
    q = pd.read_parquet(out / "quarantine.parquet")
    assert "word 2 is empty or contains whitespace" in q[q["source"] == "fin5"]["reason"].iloc[0]
    p.ingest.sources[0].unescape_html = False  # kept as it came unless asked
    kept = ingest(p.ingest, p.validate_.labels, tmp_path / "raw", 0, KINDS["token"])
    raw = pd.concat([pd.read_parquet(tmp_path / "raw" / f"{s}.parquet") for s in ("train", "validation")])
    assert kept.sources["fin5"].kept == 3 and "AT&amp;T rocks &lt;3" in set(raw["text"])


def test_ner_suite_rejects_tags_outside_the_label_set(ner_data, tmp_path):
    from lmops.tasks.validate import validate_frames

    out, _, p = ner_data
    labeled = pd.read_parquet(out / "train.parquet")
    ok = validate_frames({"labeled": labeled}, p.validate_, KINDS["token"])
    assert ok.success
    broken = labeled.copy()
    broken.loc[0, "label"] = broken.loc[0, "label"].replace("O", "B-XYZ", 1)
    bad = validate_frames({"labeled": broken}, p.validate_, KINDS["token"])
    assert not bad.success and any(f.expectation == "expect_column_values_to_match_regex" for f in bad.failures)


@pytest.fixture(scope="module")
def ner_runs(tiny_lm, ner_data, tmp_path_factory):
    from lmops.tasks.finetune import finetune

    _, pre, _ = tiny_lm
    out, _, p = ner_data
    runs = {}
    for method in ("full", "lora"):
        # full: 6 epochs at batch 8 get the tiny model past predicting all "O" (epoch 3: val entity F1 ~0.9)
        fp = p.finetune.model_copy(update={"method": method, "lr": 3e-3, "epochs": 6, "batch_size": 8} if method == "full" else
                                   {"method": method, "lr": 1e-2})
        runs[method] = finetune(out / "train.parquet", out / "validation.parquet", pre.model_dir, NER_LABELS, fp, 0,
                                tmp_path_factory.mktemp(f"ner-{method}"), progress=False), fp
    return runs, out


def test_ner_finetune_learns_and_reports_entity_f1(ner_runs, tmp_path):
    from lmops.tasks.evaluate import evaluate_model

    (s, fp), data = ner_runs[0]["full"], ner_runs[1]
    assert s.task == "token" and s.val_entity_f1 is not None
    assert s.history[-1]["train_loss"] < s.history[0]["train_loss"]
    r = evaluate_model(Path(s.model_dir), data / "test.parquet", NER_LABELS, fp.max_length, 16, tmp_path, KINDS["token"])
    assert set(r.report["per_class"]) <= {"PER", "ORG", "LOC", "MISC"} and "PER" in r.report["per_class"]
    preds = pd.read_parquet(r.predictions_path)
    test = pd.read_parquet(data / "test.parquet")
    # predicting all "O" would score the share of O as accuracy and 0 entity F1: the model must beat both
    gold = test["label"].str.split(" ").explode()
    assert r.micro_f1 > 0.05 and r.accuracy > (gold == "O").mean() + 0.01, (r.micro_f1, r.accuracy, (gold == "O").mean())
    assert (preds["prediction"].str.split(" ").str.len() == test["text"].str.split(" ").str.len()).all()
    assert "entity-level (seqeval" in Path(r.report_path).read_text()
    assert len(r.report["confusion_matrix"]) == len(NER_LABELS)
    # every predicted sequence is valid IOB2 (the Viterbi path over the model's own logits), where a per-word argmax is not
    from lmops.kinds.token import iob2_transitions, viterbi_tags
    from lmops.tasks.predict import load_classifier, predict_logits

    allowed, opens = iob2_transitions(NER_LABELS)
    ids = [[NER_LABELS.index(t) for t in p.split()] for p in preds["prediction"]]
    assert all(opens[t[0]] and all(allowed[a, b] for a, b in zip(t, t[1:])) for t in ids if t)
    model, tok = load_classifier(s.model_dir, NER_LABELS, KINDS["token"])
    logits = predict_logits(model, tok, KINDS["token"].inputs(test), KINDS["token"], NER_LABELS, fp.max_length, 16)
    assert ids == [viterbi_tags(l, NER_LABELS) for l in logits]
    confidence = [float(l.softmax(-1)[range(len(t)), t].mean()) for l, t in zip(logits, ids)]
    assert preds["confidence"].tolist() == pytest.approx(confidence, abs=1e-6)


def test_ner_lora_reload_and_adapter_reproduce_the_merged_model(ner_runs):
    from peft import PeftModel

    from lmops.tasks.predict import load_classifier, predict_logits

    (s, fp), data = ner_runs[0]["lora"], ner_runs[1]
    kind = KINDS["token"]
    words = kind.inputs(pd.read_parquet(data / "test.parquet").head(20))
    merged = predict_logits(*load_classifier(s.model_dir, NER_LABELS, kind), words, kind, NER_LABELS, fp.max_length, 8)
    again = predict_logits(*load_classifier(s.model_dir, NER_LABELS, kind), words, kind, NER_LABELS, fp.max_length, 8)
    base, tok = load_classifier(s.base_model, NER_LABELS, kind)
    adapter = predict_logits(PeftModel.from_pretrained(base, s.adapter_dir), tok, words, kind, NER_LABELS, fp.max_length, 8)
    for a, b, c in zip(merged, again, adapter):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_first_subtoken_alignment_and_seqeval_module():
    from seqeval.metrics import f1_score
    from transformers import BertTokenizerFast

    from lmops.kinds.token import align_tags
    from lmops.metrics import seqeval_scores

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "apple", "rose", "sil", "##icon", "valley"]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.txt").write_text("\n".join(vocab))
        tok = BertTokenizerFast(str(Path(d) / "vocab.txt"))
    enc = KINDS["token"].encode(tok, [["silicon", "valley", "rose"]], 16)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0])[:5] == ["[CLS]", "sil", "##icon", "valley", "rose"]
    assert align_tags(enc, [[3, 4, 0]])[0, :6].tolist() == [-100, 3, -100, 4, 0, -100]
    refs = [[0, 3, 4, 0], [1, 2, 0, 0]]
    preds = [[0, 3, 4, 0], [1, 0, 0, 0]]
    out = seqeval_scores(refs, preds, NER_LABELS)
    names = lambda seqs: [[NER_LABELS[i] for i in s] for s in seqs]  # noqa: E731
    assert out["micro_f1"] == pytest.approx(f1_score(names(refs), names(preds)))
    assert out["per_class"]["PER"]["recall"] == 0.0 and out["per_class"]["ORG"]["f1"] == 1.0


def test_entity_task_gives_one_row_per_entity_and_keeps_headlines_in_one_split(tmp_path):
    p = params_from_dict(tiny_params_dict(finetune={"task": "entity"}))
    summary = ingest(p.ingest, p.validate_.labels, tmp_path, p.project.seed, KINDS["entity"])
    parts = {n: pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("train", "validation", "test")}
    heads = {n: set(part["id"].str.rsplit(":", n=1).str[0]) for n, part in parts.items()}
    assert not (heads["train"] & heads["test"]) and not (heads["train"] & heads["validation"]) and not (heads["validation"] & heads["test"])
    rows = pd.concat(parts.values())
    assert len(rows) > summary.sources["sentfin"].kept  # several entities per headline
    # headlines with mixed entity sentiment (quarantined for the headline task) are kept here
    mixed = rows.groupby(rows["id"].str.rsplit(":", n=1).str[0])["label"].nunique()
    assert (mixed > 1).sum() > 0
    assert all(len(json.loads(e)) == 1 for e in rows["entities"])
    c = summary.sources["sentfin"]
    assert c.rows_in == c.kept + c.quarantined + c.duplicates


def test_entity_finetune_pairs_entity_with_headline(tiny_lm, tmp_path):
    from lmops.tasks.evaluate import evaluate_model
    from lmops.tasks.finetune import finetune
    from lmops.tasks.predict import load_classifier

    _, pre, _ = tiny_lm
    p = params_from_dict(tiny_params_dict(finetune={"task": "entity", "epochs": 2}))
    data = tmp_path / "data"
    ingest(p.ingest, p.validate_.labels, data, p.project.seed, KINDS["entity"])
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, p.validate_.labels, p.finetune, 0, tmp_path / "ft", progress=False)
    assert s.task == "entity" and s.history[-1]["train_loss"] < s.history[0]["train_loss"]
    test = pd.read_parquet(data / "test.parquet")
    model, tok = load_classifier(s.model_dir, p.validate_.labels, KINDS["entity"])
    pair = KINDS["entity"].inputs(test.head(1))[0]
    ids = KINDS["entity"].encode(tok, [pair], 64)["input_ids"][0].tolist()
    assert ids.count(tok.sep_token_id) == 2  # [CLS] entity [SEP] headline [SEP]
    r = evaluate_model(Path(s.model_dir), data / "test.parquet", p.validate_.labels, 64, 32, tmp_path / "ev", KINDS["entity"])
    assert r.n == len(test) and 0 <= r.macro_f1 <= 1
    # monitor.entity_model: a mention is scored as the (entity, headline) pair, exactly as evaluation scores it
    from lmops.tasks.monitor.scoring import Scorer

    scorer = Scorer("ent", "1", "champion", p.validate_.labels, model, tok, None, task="entity")
    pairs = KINDS["entity"].inputs(test.head(20))
    probs = scorer.probabilities([t for _, t in pairs], 8, 64, pairs=[e for e, _ in pairs])
    preds = pd.read_parquet(r.predictions_path).head(20)
    assert [p.validate_.labels[j] for j in probs.argmax(-1)] == preds["prediction"].tolist()
    assert probs.max(-1) == pytest.approx(preds["confidence"].to_numpy(), abs=1e-4)


@pytest.mark.parametrize("finetune,source_format,message", [
    ({"task": "token"}, "sentfin", "needs format: conll"),
    ({"task": "sequence"}, "conll", "set finetune.task: token"),
    ({"task": "entity"}, "conll", "set finetune.task: token"),
])
def test_task_and_source_formats_must_agree(finetune, source_format, message):
    d = tiny_params_dict(finetune=finetune)
    d["ingest"]["sources"][0]["format"] = source_format
    with pytest.raises(ConfigError, match=message):
        params_from_dict(d)


def test_length_grouped_batches_cut_padding_and_keep_every_row():
    import numpy as np

    from lmops.tasks.finetune import length_grouped

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 1000)
    order = rng.permutation(1000)
    grouped = length_grouped(order, lengths, 16, np.random.default_rng(1))
    assert sorted(grouped.tolist()) == list(range(1000))

    def padded(o):
        return sum(16 * lengths[o[i : i + 16]].max() for i in range(0, len(o), 16))

    assert padded(grouped) < 0.7 * padded(order)


def test_group_by_length_sorts_by_the_word_pieces_a_batch_is_padded_to(tiny_lm):
    """Characters are a poor proxy (a URL is many characters and few pieces, a number the reverse): each kind's
    length is what its encoder pads the input to, capped at max_length; the token kind counts words."""
    from lmops.kinds.base import Reading
    from lmops.models import load_tokenizer

    tok_run, _, _ = tiny_lm
    tok = load_tokenizer(tok_run.tokenizer_dir)
    texts = ["profit rises", "https://t.co/abcdefghijk", "shares of acme fall 3.5% after guidance cut on weak demand in asia"]
    pairs = [("acme", t) for t in texts]
    for kind, inputs in ((KINDS["sequence"], texts), (KINDS["entity"], pairs)):
        got = kind.lengths(tok, inputs, 24, Reading())
        alone = [kind.encode(tok, [x], 24)["input_ids"].shape[1] for x in inputs]
        assert got == alone and max(got) == 24 and min(got) < 24, got
    marked = KINDS["entity"].lengths(tok, [("acme", texts[2])], 64, Reading(entity_marker="*"))
    assert marked[0] == KINDS["entity"].lengths(tok, [("acme", texts[2])], 64, Reading())[0] + 2  # read as trained
    assert KINDS["token"].lengths(tok, [["Acme", "Corp", "falls"], ["Hi"]], 8, Reading()) == [3, 1]


def test_the_entity_marker_wraps_every_whole_word_mention_of_the_target_in_any_case():
    from lmops.kinds.entity import mark_entity

    assert mark_entity("Silver", "Gold shines; silver dull", "*") == "Gold shines; * silver * dull"
    assert mark_entity("Gold", "Gold shines; Silver dull", "*") == "* Gold * shines; Silver dull"
    assert mark_entity("Tata", "Tata Motors up, Tatas down, tata steel flat", "*") == "* Tata * Motors up, Tatas down, * tata * steel flat"
    assert mark_entity("M&M", "M&M (Mahindra) gains", "«") == "« M&M « (Mahindra) gains"  # regex characters are literal
    assert mark_entity("S&P 500", "Sensex up; S&P 500 down", "*") == "Sensex up; * S&P 500 * down"
    assert mark_entity("Infosys", "TCS rises", "*") == "TCS rises"  # a mention not found: the text as it was
    with pytest.raises(ConfigError, match="finetune.entity_marker"):
        params_from_dict(tiny_params_dict(finetune={"entity_marker": "*"}))  # the headline task has no target entity
    with pytest.raises(ConfigError, match="finetune.entity_marker"):
        params_from_dict(tiny_params_dict(finetune={"task": "entity", "entity_marker": "< <"}))
    assert params_from_dict(tiny_params_dict(finetune={"task": "entity", "entity_marker": "*"})).finetune.entity_marker == "*"


def test_a_marked_entity_model_saves_its_marker_and_every_reader_marks_alike(tiny_lm, tmp_path):
    from lmops.tasks.evaluate import evaluate_model
    from lmops.tasks.finetune import finetune
    from lmops.tasks.predict import load_classifier, predict_logits

    _, pre, _ = tiny_lm
    p = params_from_dict(tiny_params_dict(finetune={"task": "entity", "epochs": 1, "entity_marker": "*"}))
    labels, kind = p.validate_.labels, KINDS["entity"]
    data = tmp_path / "data"
    ingest(p.ingest, labels, data, p.project.seed, kind)
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, labels, p.finetune, 0, tmp_path / "ft", progress=False)
    assert json.loads((Path(s.model_dir) / "config.json").read_text())["lmops_entity_marker"] == "*"
    model, tok = load_classifier(s.model_dir, labels, kind)
    assert Reading.of(model) == Reading(entity_marker="*")
    pairs = kind.inputs(pd.read_parquet(data / "test.parquet"))
    star = tok.convert_tokens_to_ids("*")
    marked = kind.encode(tok, pairs, 64, Reading.of(model))["input_ids"]
    assert (marked == star).sum() >= len(pairs)  # (nearly) every target found and marked on both sides
    assert (kind.encode(tok, pairs, 64)["input_ids"] == star).sum() < (marked == star).sum()
    # evaluation reads the model as it was trained: its predictions are those of the marked inputs
    r = evaluate_model(Path(s.model_dir), data / "test.parquet", labels, 64, 32, tmp_path / "ev", kind)
    logits = predict_logits(model, tok, pairs, kind, labels, 64, 32)
    predictions = pd.read_parquet(r.predictions_path)
    assert [labels[j] for j in logits.argmax(-1)] == predictions["prediction"].tolist()
    # the report scores the pairs of headlines whose entities disagree apart from the rest (the seeded split has both)
    test = pd.read_parquet(data / "test.parquet")
    mixed = (test.groupby(test["id"].str.rsplit(":", n=1).str[0])["label"].transform("nunique") > 1).to_numpy()
    right = (predictions["prediction"] == predictions["label"]).to_numpy()
    assert 0 < mixed.sum() < len(test) and set(r.report["slices"]) == {"mixed_headlines", "consistent_headlines"}
    for name, rows in (("mixed_headlines", mixed), ("consistent_headlines", ~mixed)):
        assert r.report["slices"][name]["n"] == rows.sum() and r.report["slices"][name]["accuracy"] == pytest.approx(right[rows].mean())
    assert "slice `mixed_headlines`" in Path(r.report_path).read_text()
    model.config.lmops_entity_marker = ""  # a reader that ignored the saved marker would see other inputs
    assert not torch.allclose(logits, predict_logits(model, tok, pairs, kind, labels, 64, 32))
    # a fine-tuning without the marker, from the marked model, trains and saves a model that reads plain pairs
    again = finetune(data / "train.parquet", data / "validation.parquet", s.model_dir, labels,
                     p.finetune.model_copy(update={"entity_marker": "", "epochs": 1}), 0, tmp_path / "ft2", progress=False)
    assert json.loads((Path(again.model_dir) / "config.json").read_text())["lmops_entity_marker"] == ""
    # `lmops compare` judges a change on the kind's slices too: the paired difference on the mixed headlines' pairs
    from lmops.tasks.stages import compare_models

    q = params_from_dict(tiny_params_dict(finetune={"task": "entity", "max_length": 64}, evaluate={"batch_size": 32}, cache={"enabled": False}))
    cmp = compare_models(q, [s.model_dir], [again.model_dir], data / "test.parquet", tmp_path / "cmp")
    fa, fb = (pd.read_parquet(tmp_path / "cmp" / side / "predictions.parquet") for side in ("a", "b"))
    assert fa["prediction"].tolist() == predictions["prediction"].tolist()  # the marked model is read marked here too
    gain = (fb["prediction"] == fb["label"]).to_numpy()[mixed].mean() - (fa["prediction"] == fa["label"]).to_numpy()[mixed].mean()
    assert cmp["slices"]["mixed_headlines"]["n"] == mixed.sum() and cmp["slices"]["mixed_headlines"]["accuracy"]["diff"] == pytest.approx(gain, abs=1e-4)
    assert "| mixed_headlines |" in Path(cmp["report"]).read_text()


def test_entity_task_deduplicates_headlines_whatever_their_entities(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text('Title,Decisions\n'
                   '"Huge activity in Nifty December series surprises market","{\'Nifty\': \'positive\', \'Sensex\': \'neutral\'}"\n'
                   '"Huge activity in Nifty December series surprises market","{\'Nifty\': \'positive\'}"\n'
                   '"Steel stocks slide as prices fall in China","{\'Steel\': \'negative\'}"\n')
    p = params_from_dict(tiny_params_dict(finetune={"task": "entity"}))
    p.ingest.sources[0].path = str(src)
    from lmops.tasks.ingest import ingest_labeled_only

    labeled, summary = ingest_labeled_only(p.ingest.model_copy(update={"sources": [p.ingest.sources[0]]}), p.validate_.labels, tmp_path / "out",
                                           KINDS["entity"])
    c = summary.sources["sentfin"]
    assert (c.rows_in, c.kept, c.duplicates) == (3, 2, 1)
    assert sorted(json.loads(e).popitem()[0] for e in labeled["entities"]) == ["Nifty", "Sensex", "Steel"]


def test_evaluate_data_flag_reads_a_conll_file_for_ner(ner_runs, tmp_path, project):
    """`lmops evaluate MODEL --data FILE` reads a tagger's FILE as CoNLL, same rules, whatever the project's params."""
    from lmops.tasks.evaluate import evaluate_model, load_labeled_file

    (s, fp), _ = ner_runs[0]["full"], ner_runs[1]
    p = ner_params()
    data, counts, _ = load_labeled_file(FIXTURES / "ner_sec" / "FIN3_sample.txt", p, tmp_path / "data")
    frame = pd.read_parquet(data)
    assert counts.rows_in == counts.kept + counts.quarantined + counts.duplicates and counts.kept == len(frame)
    assert len(frame) > 50 and (frame["text"].str.split(" ").str.len() == frame["label"].str.split(" ").str.len()).all()
    r = evaluate_model(Path(s.model_dir), data, NER_LABELS, fp.max_length, 16, tmp_path / "ev", KINDS["token"])
    assert r.n == len(frame) and "PER" in r.report["per_class"]
    # the command reads the tagger as what it is, in a project whose params train a sentiment classifier at length 32
    assert ner_params().finetune.max_length == 96 and yaml.safe_load((project / "params.yaml").read_text())["finetune"]["max_length"] == 32
    out = run_cli("evaluate", s.model_dir, "--data", str(FIXTURES / "ner_sec" / "FIN3_sample.txt"), "--json", cwd=project)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["read_as"] == {"task": "token", "labels": NER_LABELS, "max_length": 96}
    assert res["n"] == r.n and res["micro_f1"] == pytest.approx(r.micro_f1, abs=1e-9)
    out = run_cli("compare", s.model_dir, s.model_dir, "--data", str(FIXTURES / "ner_sec" / "FIN3_sample.txt"), "--json", cwd=project)
    assert out.returncode == 0, out.stderr[-2000:]
    cmp = json.loads(out.stdout.strip().splitlines()[-1])["scored"]
    assert cmp["a"]["micro_f1"] == pytest.approx(r.micro_f1, abs=1e-6) and cmp["b_minus_a"]["micro_f1"]["diff"] == 0


def test_compare_base_for_ner_bootstraps_entity_f1_over_sentences(ner_runs, tiny_lm, tmp_path):
    """`lmops finetune --compare-base` under finetune.task token: the generic fine-tune runs with the same
    params, and the difference is entity micro-F1 with a sentence-level bootstrap interval."""
    from lmops.layout import RunLayout, Snapshot
    from lmops.tasks.stages import compare_bases

    _, pre, _ = tiny_lm
    (s, _), data = ner_runs[0]["full"], ner_runs[1]
    p = ner_params(method="full", lr=3e-3, epochs=1)
    out = compare_bases(p, Snapshot(data), RunLayout(tmp_path), s.model_dir, pre.model_dir)
    d = out["domain_minus_generic"]
    assert d["unit"] == "sentence" and d["n_test"] == len(pd.read_parquet(data / "test.parquet"))
    assert d["micro_f1"]["diff"] == pytest.approx(out["domain"]["micro_f1"] - out["generic"]["micro_f1"], abs=1e-3)
    lo, hi = d["micro_f1"]["ci95"]
    assert lo <= d["micro_f1"]["diff"] <= hi


def test_the_monitor_finds_companies_with_a_registered_tagger(ner_runs):
    """monitor.ner_model: the tagger's spans (of monitor.ner_types) are companies, a dictionary name when the span is one
    of its surfaces; the tags are those evaluation decodes from the same model."""
    from lmops.config import MonitorEntity
    from lmops.tasks.monitor.entities import EntityMatcher, ner_mentions, spans
    from lmops.tasks.monitor.scoring import Scorer
    from lmops.tasks.predict import load_classifier, predict_labels

    (s, fp), data = ner_runs[0]["full"], ner_runs[1]
    model, tok = load_classifier(s.model_dir, NER_LABELS, KINDS["token"])
    tagger = Scorer("ner", "1", "champion", NER_LABELS, model, tok, None, task="token")
    test = pd.read_parquet(data / "test.parquet").head(80)
    texts = test["text"].tolist()
    tags = tagger.tags(texts, 16, fp.max_length)
    assert tags == predict_labels(model, tok, test, NER_LABELS, KINDS["token"], fp.max_length, 16)[0]
    types = ["ORG", "PER", "LOC", "MISC"]
    predicted = [spans(t.split(" "), x.split(" "), types) for t, x in zip(tags, texts)]
    first = next(p[0] for p in predicted if p)  # the tiny tagger finds some entities (validation entity F1 ~0.9)
    found = ner_mentions(tags, texts, EntityMatcher({"Canonical Co": MonitorEntity(aliases=[first.strip(",.;:")])}), types)
    assert [len(f) for f in found] == [len({sp.strip(",.;:()") for sp in p if len(sp.strip(",.;:()")) >= 2}) for p in predicted]
    assert "Canonical Co" in {n for f in found for n, _ in f}
    with pytest.raises(TypeError, match="use tags"):
        tagger.probabilities(texts[:2], 2, 32)


def _vocab_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "apple", "rose", "sil", "##icon", "valley", "$"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(str(tmp_path / "vocab.txt"))  # uncased: lower-cases before it looks words up


def test_casing_marks_every_subtoken_of_a_capitalised_word(tmp_path):
    tok = _vocab_tokenizer(tmp_path)
    kind = KINDS["token"]
    words = [["Silicon", "valley", "ROSE", "$Apple", "iPhone"], ["apple"]]
    plain, cased = kind.encode(tok, words, 16), kind.encode(tok, words, 16, Reading(casing="token_type"))
    assert tok.convert_ids_to_tokens(cased["input_ids"][0])[:7] == ["[CLS]", "sil", "##icon", "valley", "rose", "$", "apple"]
    torch.testing.assert_close(cased["input_ids"], plain["input_ids"])  # the same ids: the tokenizer cannot see case
    assert plain["token_type_ids"].sum() == 0
    # [CLS] Sil ##icon valley ROSE $ Apple iPhone(unk) [SEP]: all sub-tokens of "Silicon", "ROSE", "$Apple"; padding 0
    assert cased["token_type_ids"][0, :9].tolist() == [0, 1, 1, 0, 1, 1, 1, 0, 0]
    assert cased["token_type_ids"][1].tolist() == [0, 0, 0] + [0] * (cased["input_ids"].shape[1] - 3)


def test_casing_is_a_token_task_option_and_needs_token_type_embeddings():
    from transformers import BertConfig, BertForTokenClassification, GPT2Config, GPT2ForTokenClassification

    from lmops.errors import UserError
    from lmops.tasks.finetune import enable_casing

    with pytest.raises(ConfigError, match="finetune.casing"):
        params_from_dict(tiny_params_dict(finetune={"casing": "token_type"}))  # the headline task reads texts, not words
    assert ner_params(casing="token_type").finetune.casing == "token_type"
    one = BertForTokenClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=16, type_vocab_size=1, num_labels=3))
    row = one.bert.embeddings.token_type_embeddings.weight[0].detach().clone()
    enable_casing(one, "token_type")
    grown = one.bert.embeddings.token_type_embeddings.weight
    assert grown.shape[0] == 2 and one.config.type_vocab_size == 2 and one.config.lmops_casing == "token_type"
    torch.testing.assert_close(grown[1].detach(), row)  # starts as the base's only segment: no change until trained
    gpt = GPT2ForTokenClassification(GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, num_labels=3))
    with pytest.raises(UserError, match="token-type embeddings"):
        enable_casing(gpt, "token_type")


def test_a_cased_tagger_saves_its_casing_and_every_reader_encodes_alike(tiny_lm, ner_data, tmp_path):
    from lmops.tasks.finetune import finetune
    from lmops.tasks.predict import load_classifier, predict_logits

    _, pre, _ = tiny_lm
    out, _, p = ner_data
    fp = p.finetune.model_copy(update={"method": "full", "lr": 3e-3, "epochs": 2, "batch_size": 8, "casing": "token_type"})
    s = finetune(out / "train.parquet", out / "validation.parquet", pre.model_dir, NER_LABELS, fp, 0, tmp_path / "ft", progress=False)
    assert json.loads((Path(s.model_dir) / "config.json").read_text())["lmops_casing"] == "token_type"
    kind = KINDS["token"]
    model, tok = load_classifier(s.model_dir, NER_LABELS, kind)
    assert Reading.of(model).casing == "token_type"
    words = kind.inputs(pd.read_parquet(out / "test.parquet").head(12))
    cased = predict_logits(model, tok, words, kind, NER_LABELS, fp.max_length, 8)
    lowered = predict_logits(model, tok, [[w.lower() for w in ws] for ws in words], kind, NER_LABELS, fp.max_length, 8)
    assert any(not torch.allclose(a, b) for a, b in zip(cased, lowered))  # capitals reach the model
    model.config.lmops_casing = "none"  # a reader that ignored the saved casing would see other inputs
    assert any(not torch.allclose(a, b) for a, b in zip(cased, predict_logits(model, tok, words, kind, NER_LABELS, fp.max_length, 8)))


def test_word_windows_cover_a_long_sentence_within_budget_and_never_cut_inside_an_entity():
    from lmops.kinds.token import word_windows

    counts = [1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 1]
    assert word_windows(counts, 100, 10) == [(0, 12)]  # fits: one window
    spans = word_windows(counts, 5, 2)
    assert spans[0][0] == 0 and spans[-1][1] == 12
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert a < c <= b and sum(counts[c:b]) <= 2  # forward, overlapping by at most 2 sub-tokens
    assert all(sum(counts[a:b]) <= 5 for a, b in spans)
    flat = word_windows(counts, 5, 0)
    assert [b for _, b in flat[:-1]] == [a for a, _ in flat[1:]]  # back to back
    # word 4 continues an entity (an I- tag): no window ends before it while the entity fits
    guarded = word_windows(counts, 5, 0, can_cut=[j != 4 for j in range(12)])
    assert all(b != 4 for _, b in guarded[:-1]) and guarded[-1][1] == 12
    assert word_windows([9, 1], 5, 0) == [(0, 1), (1, 2)]  # one over-long word is a window alone


def test_viterbi_tags_are_the_most_probable_valid_iob2_sequence():
    import itertools

    import numpy as np

    from lmops.kinds.token import iob2_transitions, viterbi_tags

    labels = ["O", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    allowed, opens = iob2_transitions(labels)

    def valid(path):
        return opens[path[0]] and all(allowed[a, b] for a, b in zip(path, path[1:]))

    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 4, 5] * 40:
        scores = torch.log_softmax(torch.as_tensor(rng.normal(0, 2, (n, len(labels)))), -1)
        path = viterbi_tags(scores, labels)
        assert valid(path)
        best = max((p for p in itertools.product(range(len(labels)), repeat=n) if valid(p)),
                   key=lambda p: float(sum(scores[t, j] for t, j in enumerate(p))))
        assert float(sum(scores[t, j] for t, j in enumerate(path))) == pytest.approx(float(sum(scores[t, j] for t, j in enumerate(best))))
        argmax = scores.argmax(-1).tolist()
        if valid(argmax):
            assert path == argmax
    # a type switch inside a span ("Silicon Valley Bank, a California corporation" read B-ORG I-ORG I-LOC) is one span
    words = torch.log(torch.tensor([[.05, .9, .02, .02, .01], [.05, .01, .6, .04, .3], [.05, .01, .35, .04, .55]]))
    assert [labels[j] for j in words.argmax(-1)] == ["B-ORG", "I-ORG", "I-LOC"]
    assert [labels[j] for j in viterbi_tags(words, labels)] == ["B-ORG", "I-ORG", "I-ORG"]
    # ... and so read every reader of the token kind: predictions, evaluation reports, validation during training
    kind, gold = KINDS["token"], [[1, 2, 2]]
    assert kind.decode([words], labels)[0] == ["B-ORG I-ORG I-ORG"]
    assert kind.decode([words], labels)[1] == [pytest.approx((.9 + .6 + .35) / 3)]
    report, text, _, _ = kind.report([words], gold, labels)
    assert text == ["B-ORG I-ORG I-ORG"] and report["micro_f1"] == 1.0  # the argmax would find 2 spans, both wrong
    assert kind.validation_score([words], gold, labels, torch.nn.CrossEntropyLoss())["entity_f1"] == 1.0
    # a sentence cannot open inside a span, nor a span inside O
    assert [labels[j] for j in viterbi_tags(torch.log(torch.tensor([[.3, .3, .4, 0., 0.]])), labels)] in (["O"], ["B-ORG"])
    assert viterbi_tags(torch.zeros((0, len(labels))), labels) == []


def test_a_sentence_longer_than_max_length_is_tagged_to_its_last_word(tmp_path):
    kind = KINDS["token"]
    tok = _vocab_tokenizer(tmp_path)
    words = [["apple", "Silicon", "valley", "rose"] * 6, ["apple", "rose"]]  # 30 sub-tokens, then 2
    pieces, plan = kind.windows(tok, words, 12)  # 10 sub-tokens per window
    assert len(plan[0]) > 2 and len(plan[1]) == 1 and pieces[plan[1][0][0]] == ["apple", "rose"]
    # a unit per piece whose rows name the word they score: join must give every word its own row back
    units = [torch.tensor([[a + j, k] for j in range(b - a)], dtype=torch.float) for spans in plan for k, a, b in spans]
    joined = kind.join(units, plan)
    assert joined[0][:, 0].tolist() == list(range(24)) and joined[1][:, 0].tolist() == [0, 1]
    # a word near a window's cut is read from the neighbour where it sits more centrally
    spans = plan[0]

    def context(j, a, b):  # words between j and the nearer cut (a sentence's own ends are not cuts)
        return min(j - a if a else 99, b - 1 - j if b < 24 else 99)

    for j, (_, piece) in enumerate(joined[0].tolist()):
        _, a, b = spans[int(piece)]
        assert a <= j < b and all(context(j, a, b) >= context(j, c, d) for _, c, d in spans if c <= j < d)
    # training: back-to-back windows, each row's tags with it, no window opening on an I- tag when avoidable
    labels = ["O", "B-ORG", "I-ORG"]
    tags = [[0, 1, 2, 0] * 6, [0, 0]]
    inputs, targets, origin = kind.training_windows(tok, words, tags, labels, 12)
    assert sum(len(x) for x in inputs[:-1]) == 24 and origin == [0] * (len(inputs) - 1) + [1]
    assert all(t[0] != 2 for t in targets) and [w for x in inputs[:-1] for w in x] == words[0]


def test_lora_trains_and_saves_the_casing_embeddings(tiny_lm, ner_data, tmp_path):
    """PEFT freezes embeddings: with casing on, the token-type table is trained and saved with the merged model."""
    from safetensors.torch import load_file

    from lmops.tasks.finetune import finetune

    _, pre, _ = tiny_lm
    out, _, p = ner_data
    fp = p.finetune.model_copy(update={"method": "lora", "lr": 1e-2, "epochs": 1, "casing": "token_type"})
    s = finetune(out / "train.parquet", out / "validation.parquet", pre.model_dir, NER_LABELS, fp, 0, tmp_path / "ft", progress=False)
    key = next(k for k in load_file(str(Path(s.model_dir) / "model.safetensors")) if k.endswith("token_type_embeddings.weight"))
    trained, base = load_file(str(Path(s.model_dir) / "model.safetensors"))[key], load_file(str(Path(pre.model_dir) / "model.safetensors"))
    before = next(v for k, v in base.items() if k.endswith("token_type_embeddings.weight"))
    assert trained.shape[0] == 2 and not torch.allclose(trained[: before.shape[0]], before)
