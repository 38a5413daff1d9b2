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
