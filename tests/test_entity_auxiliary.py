"""Entity labels as an auxiliary signal for the headline model (issue 17, item 2): SEntFiN headlines whose entities
disagree are kept as train-only auxiliary rows, and fine-tuning adds one (entity, headline) pair per entity label."""

import csv
import json

import pandas as pd
import pytest

from lmops.config import params_from_dict
from lmops.errors import ConfigError, UserError
from lmops.kinds import KINDS
from lmops.tasks.finetune import finetune
from lmops.tasks.ingest import ingest
from tests.conftest import FIXTURES, tiny_params_dict

LABELS = ["negative", "neutral", "positive"]
SPLITS = ("train", "validation", "test")


def _sources(path, mixed="auxiliary"):
    return {"sources": [{"name": "sentfin", "role": "labeled", "format": "sentfin", "path": str(path), "mixed_entities": mixed},
                        {"name": "fomc", "role": "unlabeled", "format": "fomc", "path": str(FIXTURES / "fomc")}]}


def _ingest(tmp_path, name, path, mixed):
    p = params_from_dict(tiny_params_dict(ingest=_sources(path, mixed)))
    out = tmp_path / name
    return out, ingest(p.ingest, p.validate_.labels, out, p.project.seed, p.finetune.kind), p


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aux")
    return _ingest(tmp, "quarantined", FIXTURES / "sentfin_sample.csv", "quarantine"), _ingest(tmp, "kept", FIXTURES / "sentfin_sample.csv", "auxiliary")


def test_mixed_headlines_become_auxiliary_rows_and_the_splits_do_not_move(both):
    (base, s0, _), (aux, s1, _) = both
    for name in SPLITS:
        pd.testing.assert_frame_equal(pd.read_parquet(base / f"{name}.parquet"), pd.read_parquet(aux / f"{name}.parquet"))
    mixed = s0.sources["sentfin"].quarantined
    rows = pd.read_parquet(aux / "auxiliary.parquet")
    c = s1.sources["sentfin"]
    assert c.rows_in == c.kept + c.quarantined + c.duplicates
    assert mixed > 5 and c.quarantined == 0 and len(rows) == mixed == s1.auxiliary_rows
    assert rows["label"].isna().all()
    for ents in rows["entities"]:
        assert len(set(json.loads(ents).values()) & set(LABELS)) >= 2  # mixed: that is why there is no headline label
    assert json.loads((aux / "summary.json").read_text())["auxiliary_rows"] == len(rows)
    assert "auxiliary_rows" not in json.loads((base / "summary.json").read_text()) and not (base / "auxiliary.parquet").exists()


def test_an_auxiliary_copy_of_an_evaluation_headline_is_quarantined_and_one_of_a_training_headline_moves_nothing(both, tmp_path):
    (base, _, _), _ = both
    test_text = pd.read_parquet(base / "test.parquet")["text"].iloc[0]
    train_text = pd.read_parquet(base / "train.parquet")["text"].iloc[0]
    path = tmp_path / "sentfin.csv"
    lines = (FIXTURES / "sentfin_sample.csv").read_text(encoding="utf-8").rstrip("\n").split("\n")
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
        w = csv.writer(fh, lineterminator="\n")
        # the same headlines again, labelled per entity with two labels: auxiliary rows after the labeled copies
        w.writerow([9001, test_text, "{'Alpha': 'positive', 'Beta': 'negative'}", 5])
        w.writerow([9002, train_text, "{'Alpha': 'neutral', 'Beta': 'negative'}", 5])
    out, s, _ = _ingest(tmp_path, "copies", path, "auxiliary")
    for name in SPLITS:  # the labeled copies stay where they were: auxiliary rows never knock out a labeled one
        pd.testing.assert_frame_equal(pd.read_parquet(base / f"{name}.parquet"), pd.read_parquet(out / f"{name}.parquet"))
    aux, q = pd.read_parquet(out / "auxiliary.parquet"), pd.read_parquet(out / "quarantine.parquet")
    assert test_text not in set(aux["text"]) and train_text in set(aux["text"])
    leaked = q[q["reason"].str.startswith("leakage")]
    assert leaked["text"].tolist() == [test_text[:200]] and leaked["row"].tolist() == [len(lines)]
    c = s.sources["sentfin"]
    assert c.rows_in == c.kept + c.quarantined + c.duplicates and c.quarantined == 1


def test_auxiliary_pairs_put_the_entity_first_with_its_own_label():
    frame = pd.DataFrame({"text": ["Gold shines; Silver dull", "Plain headline"], "source": ["sentfin", "sentfin"],
                          "entities": ['{"Silver": "negative", "Gold": "Positive"}', None]})
    inputs, targets, sources = KINDS["sequence"].auxiliary_pairs(frame, LABELS, "[SEP]")
    assert inputs == ["Gold [SEP] Gold shines; Silver dull", "Silver [SEP] Gold shines; Silver dull"]
    assert targets == [2, 0] and sources == ["sentfin:entities"] * 2


def test_entity_auxiliary_params_name_what_to_set():
    with pytest.raises(ConfigError, match="mixed_entities: auxiliary"):
        params_from_dict(tiny_params_dict(finetune={"entity_auxiliary": "mixed"}))
    with pytest.raises(ConfigError, match="task 'entity' cannot train on them"):
        params_from_dict(tiny_params_dict(finetune={"task": "entity", "entity_auxiliary": "all"}))
    with pytest.raises(ConfigError, match="reads the entity labels itself"):
        params_from_dict(tiny_params_dict(ingest=_sources(FIXTURES / "sentfin_sample.csv"), finetune={"task": "entity"}))
    bad = _sources(FIXTURES / "sentfin_sample.csv")
    bad["sources"][1]["mixed_entities"] = "auxiliary"
    with pytest.raises(ConfigError, match="needs role: labeled and format: sentfin"):
        params_from_dict(tiny_params_dict(ingest=bad))
    params_from_dict(tiny_params_dict(ingest=_sources(FIXTURES / "sentfin_sample.csv"), finetune={"entity_auxiliary": "mixed"}))


def test_finetune_trains_on_the_pairs_it_is_told_to(both, tiny_lm, tmp_path):
    (base, _, _), (aux, _, p) = both
    _, pre, _ = tiny_lm
    train, extra = pd.read_parquet(aux / "train.parquet"), pd.read_parquet(aux / "auxiliary.parquet")
    pairs = lambda frame: sum(len(json.loads(e)) for e in frame["entities"].dropna())  # noqa: E731
    seen = {}
    for mode in ("none", "mixed", "all"):
        fp = p.finetune.model_copy(update={"entity_auxiliary": mode, "epochs": 1})
        s = finetune(aux / "train.parquet", aux / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / mode, progress=False)
        seen[mode] = s.train_rows
    assert seen == {"none": len(train), "mixed": len(train) + pairs(extra), "all": len(train) + pairs(extra) + pairs(train)}
    assert pairs(extra) > len(extra)  # two or more entities per mixed headline
    fp = p.finetune.model_copy(update={"entity_auxiliary": "mixed", "epochs": 1})
    with pytest.raises(UserError, match="mixed_entities: auxiliary"):
        finetune(base / "train.parquet", base / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "no-aux", progress=False)


def test_great_expectations_validates_the_auxiliary_rows_too(both, tmp_path):
    from lmops.tasks.validate import validate_snapshot

    (_, _, _), (aux, _, p) = both
    report = validate_snapshot(aux, p.validate_, tmp_path / "validate", p.finetune.kind)
    checked = {(o.expectation, o.column) for o in report.outcomes if o.suite == "auxiliary"}
    assert report.success and {("expect_column_values_to_be_null", "label"), ("expect_column_values_to_not_be_null", "entities")} <= checked
