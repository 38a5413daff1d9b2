import pytest

from lmops.config import GateParams
from tasks.gate import decide

C = lambda acc, f1: {"accuracy": acc, "macro_f1": f1, "weighted_f1": f1}  # noqa: E731


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
        (C(0.90, 0.70), C(0.80, 0.75), GateParams(primary_metric="accuracy"), True, "accuracy 0.9000 >= champion"),
        (C(0.90, 0.95), C(0.80, 0.75), GateParams(min_accuracy=0.95), False, "below the threshold"),  # beats champion, fails floor
    ],
)
def test_gate_table(candidate, champion, params, promote, reason):
    d = decide(candidate, champion, params, champion_version="3" if champion else None)
    assert d.promote is promote
    assert any(reason in r for r in d.reasons), d.reasons
    assert ("promote" in d.to_markdown()) and d.to_dict()["candidate"] == candidate
