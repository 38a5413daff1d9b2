import pytest

from lmops.config import GateParams
from lmops.tasks.gate import decide

C = lambda acc, f1, micro=None: {"accuracy": acc, "macro_f1": f1, "weighted_f1": f1, "micro_f1": f1 if micro is None else micro}  # noqa: E731


@pytest.mark.parametrize(
    "candidate, champion, params, promote, reason",
    [
        (C(0.80, 0.78), None, GateParams(min_accuracy=0.7, min_macro_f1=0.7), True, "no current champion"),
        (C(0.60, 0.78), None, GateParams(min_accuracy=0.7), False, "accuracy 0.6000 is below the threshold 0.7000"),
        (C(0.80, 0.50), None, GateParams(min_macro_f1=0.6), False, "macro_f1 0.5000 is below"),
        (C(0.80, 0.78), C(0.82, 0.80), GateParams(), False, "< champion v3 0.8000"),
        (C(0.80, 0.80), C(0.80, 0.80), GateParams(), True, ">= champion v3"),  # equal is "not worse"
        (C(0.81, 0.81), C(0.80, 0.80), GateParams(margin=0.02), False, "margin 0.02"),
        (C(0.83, 0.83), C(0.80, 0.80), GateParams(margin=0.02), True, ">= champion"),
        # margin boundary: exactly champion + margin passes, a hair below does not
        (C(0.825, 0.825), C(0.80, 0.80), GateParams(margin=0.025), True, ">= champion v3 0.8000 + margin 0.025"),
        (C(0.8249, 0.8249), C(0.80, 0.80), GateParams(margin=0.025), False, "< champion v3 0.8000 + margin 0.025"),
        (C(0.90, 0.70), C(0.80, 0.75), GateParams(primary_metric="accuracy"), True, "accuracy 0.9000 >= champion"),
        (C(0.90, 0.95), C(0.80, 0.75), GateParams(min_accuracy=0.95), False, "below the threshold"),  # beats champion, fails floor
        # NER headline: entity micro-F1 decides, whatever macro-F1 says
        (C(0.95, 0.40, micro=0.72), C(0.95, 0.60, micro=0.70), GateParams(primary_metric="micro_f1"), True, "micro_f1 0.7200 >= champion"),
        (C(0.95, 0.90, micro=0.65), C(0.95, 0.60, micro=0.70), GateParams(primary_metric="micro_f1"), False, "micro_f1 0.6500 < champion"),
    ],
)
def test_gate_table(candidate, champion, params, promote, reason):
    d = decide(candidate, champion, params, champion_version="3" if champion else None)
    assert d.promote is promote
    assert any(reason in r for r in d.reasons), d.reasons
    md = d.to_markdown()
    verdict = md.splitlines()[0]
    assert verdict == ("# Gate decision: ✅ **promote**" if promote else "# Gate decision: ⛔ **do not promote**")
    assert all(f"- {r}" in md for r in d.reasons) and d.to_dict()["candidate"] == candidate


def _set(cand_f1, champ_f1=None, lo=None, n=200):
    from lmops.tasks.gate import SetScores

    diff = None if champ_f1 is None else {"macro_f1": {"diff": cand_f1 - champ_f1, "ci95": [lo if lo is not None else cand_f1 - champ_f1 - 0.02,
                                                                                             cand_f1 - champ_f1 + 0.02]}}
    return SetScores(n=n, candidate=C(cand_f1, cand_f1), champion=None if champ_f1 is None else C(champ_f1, champ_f1),
                     ci95={"macro_f1": [cand_f1 - 0.03, cand_f1 + 0.03]}, diff=diff)


TWEETS = {"tweets": {"path": "canary.csv", "min_score": 0.5, "max_drop": 0.01}}


@pytest.mark.parametrize(
    "sets, params, promote, reason",
    [
        # better in source, worse out of source by more than the allowed drop: the case the gate exists for
        ({"tweets": _set(0.70, 0.75)}, GateParams(sets=TWEETS), False, "set tweets: macro_f1 0.7000 fell below champion v3 0.7500 by more than 0.01"),
        ({"tweets": _set(0.745, 0.75)}, GateParams(sets=TWEETS), True, "within the allowed drop 0.01"),
        ({"tweets": _set(0.45, 0.40)}, GateParams(sets=TWEETS), False, "set tweets: macro_f1 0.4500 is below its floor 0.5000"),
        ({"tweets": _set(0.70, 0.80)}, GateParams(sets={"tweets": {"path": "c.csv", "max_drop": None}}), True, "meets its floor"),
        ({}, GateParams(sets=TWEETS), False, "set tweets: not scored"),
    ],
)
def test_gate_sets_each_have_a_floor_and_a_no_regression_margin(sets, params, promote, reason):
    d = decide(C(0.85, 0.85), C(0.80, 0.80), params, champion_version="3", sets=sets)
    assert d.promote is promote and any(reason in r for r in d.reasons), d.reasons
    md = d.to_markdown()
    for name in sets:  # the decision lists every set with its interval and paired difference
        assert f"| {name} | 200 | {sets[name].candidate['macro_f1']:.4f} [" in md, md


@pytest.mark.parametrize(
    "sources, drop, promote, reason",
    [
        # pooled better, one source worse by more than allowed: a gain on headlines does not pay for a loss on tweets
        ({"sentfin": _set(0.90, 0.86), "tweets": _set(0.80, 0.83)}, 0.01, False,
         "test split, source tweets: macro_f1 0.8000 fell below champion v3 0.8300 by more than 0.01 (gate.source_max_drop)"),
        ({"sentfin": _set(0.90, 0.86), "tweets": _set(0.825, 0.83)}, 0.01, True, "test split, source tweets: macro_f1 0.8250 vs champion v3"),
        ({"sentfin": _set(0.90, 0.86), "tweets": _set(0.80, 0.83)}, None, True, ">= champion v3"),  # off: listed, not judged
        ({"sentfin": _set(0.90, 0.86), "tweets": _set(0.60)}, 0.0, True, "source sentfin: macro_f1 0.9000 vs champion"),  # new source
    ],
)
def test_a_gate_can_refuse_a_candidate_worse_on_any_source_of_the_test_split(sources, drop, promote, reason):
    d = decide(C(0.85, 0.85), C(0.84, 0.84), GateParams(source_max_drop=drop), champion_version="3", sources=sources)
    assert d.promote is promote and any(reason in r for r in d.reasons), d.reasons
    md = d.to_markdown()
    for name, s in sources.items():
        assert f"| test split · {name} | 200 | {s.candidate['macro_f1']:.4f} [" in md, md


def test_the_gate_scores_each_source_of_the_test_split_on_its_own_rows(tmp_path):
    """``stages._source_scores`` on real evaluation outputs: slices joined to the test split by id, the paired
    bootstrap over that source's rows only."""
    from types import SimpleNamespace

    import pandas as pd

    from lmops.config import params_from_dict
    from lmops.tasks.stages import _source_scores
    from tests.conftest import tiny_params_dict

    p = params_from_dict(tiny_params_dict())
    ids = [f"r{i}" for i in range(40)]
    test = pd.DataFrame({"id": ids, "text": ids, "label": ["positive", "negative"] * 20, "source": ["a"] * 20 + ["b"] * 20})
    test.to_parquet(tmp_path / "test.parquet", index=False)
    # candidate: right on every row; champion: right on a, wrong on b. Predictions stored in another row order.
    cand = test.assign(prediction=test["label"], confidence=0.9).iloc[::-1]
    champ = test.assign(prediction=[*test["label"][:20], *["neutral"] * 20], confidence=0.9)
    for name, frame in (("cand", cand), ("champ", champ)):
        frame[["id", "label", "prediction", "confidence"]].to_parquet(tmp_path / f"{name}.parquet", index=False)
    sl = lambda f1: {"n": 20, "accuracy": f1, "macro_f1": f1, "micro_f1": f1}  # noqa: E731
    c = SimpleNamespace(report={"slices": {"a": sl(1.0), "b": sl(1.0)}}, predictions_path=tmp_path / "cand.parquet")
    h = SimpleNamespace(report={"slices": {"a": sl(1.0), "b": sl(0.0)}}, predictions_path=tmp_path / "champ.parquet")
    out = _source_scores(p, c, h, tmp_path / "test.parquet")
    assert set(out) == {"a", "b"} and out["a"].n == out["b"].n == 20
    assert out["a"].diff["accuracy"]["diff"] == 0 and out["a"].diff["accuracy"]["ci95"] == [0.0, 0.0]
    assert out["b"].diff["accuracy"]["diff"] == pytest.approx(1.0) and out["b"].champion["macro_f1"] == 0.0
    assert _source_scores(p, SimpleNamespace(report={"slices": {}}), None, tmp_path / "test.parquet") == {}


@pytest.mark.parametrize("lo, promote, reason", [(0.004, True, "above noise"), (-0.003, False, "cannot be told from noise")])
def test_a_gate_can_require_a_difference_above_noise(lo, promote, reason):
    test = _set(0.85, 0.83, lo=lo)
    d = decide(C(0.85, 0.85), C(0.83, 0.83), GateParams(require_significant=True), champion_version="3", test=test)
    assert d.promote is promote and any(reason in r for r in d.reasons), d.reasons
    assert "| test split | 200 | 0.8500 [0.8200, 0.8800] | 0.8300 | +0.0200 [" in d.to_markdown()
    assert decide(C(0.85, 0.85), None, GateParams(require_significant=True)).promote  # the first champion has nothing to beat


def test_bootstrap_interval_is_seeded_and_narrows_with_more_rows():
    import numpy as np

    from lmops.metrics import bootstrap_interval, macro_f1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    p = np.where(rng.random(2000) < 0.7, y, rng.integers(0, 3, 2000))
    small, big = bootstrap_interval(y[:200].tolist(), p[:200].tolist(), list("abc")), bootstrap_interval(y.tolist(), p.tolist(), list("abc"))
    assert small == bootstrap_interval(y[:200].tolist(), p[:200].tolist(), list("abc"))  # seeded
    point = macro_f1(y.tolist(), p.tolist(), 3)
    assert big["macro_f1"][0] < point < big["macro_f1"][1] and big["accuracy"][0] < (y == p).mean() < big["accuracy"][1]
    assert big["macro_f1"][1] - big["macro_f1"][0] < small["macro_f1"][1] - small["macro_f1"][0]
    assert big["macro_f1"] == pytest.approx([0.7879, 0.8238], abs=0.002)  # pinned: 2000 rows, 80% accurate


def test_a_champion_that_trained_on_test_rows_is_compared_on_the_rest():
    """``paired``: the candidate on the rows the champion did not train on. The champion comparison reads it, the
    floors still read the whole test split, and the decision shows both."""
    notes = ["champion v3 was trained or validated on 40 of the 200 test rows: the two are compared on the other 160"]
    d = decide(C(0.80, 0.80), C(0.84, 0.84), GateParams(min_macro_f1=0.79), champion_version="3", paired=C(0.85, 0.85), notes=notes)
    assert d.promote and d.reasons[0] == notes[0] and any(">= champion v3 0.8400 + margin 0.0 (the test rows it did not train on)" in r for r in d.reasons)
    assert "| macro_f1 | 0.8000 | 0.8500 | 0.8400 |" in d.to_markdown() and d.to_dict()["paired"]["macro_f1"] == 0.85
    # without it the same numbers refuse (the whole split against the champion's in-sample score), and the floor still holds
    assert not decide(C(0.80, 0.80), C(0.84, 0.84), GateParams(), champion_version="3").promote
    assert not decide(C(0.78, 0.78), C(0.84, 0.84), GateParams(min_macro_f1=0.79), champion_version="3", paired=C(0.85, 0.85)).promote
