"""What a model was fitted on, as keys beside its weights (tasks/seen.py); the users of it are tested with real
tiny models in test_distill.py (the same teachers)."""

import numpy as np
import pandas as pd
import pytest

from lmops.errors import DataError
from lmops.tasks import seen


def test_keys_fold_case_and_whitespace_as_ingest_does_and_unknown_is_not_empty(tmp_path):
    assert seen.keys(["Shares  rise", "shares rise\n", "SHARES RISE"]).tolist() == seen.keys(["shares rise"]).tolist()
    assert len(seen.keys(["shares rise", "shares fall"])) == 2
    (tmp_path / "m").mkdir()
    assert seen.of(tmp_path / "m") is None and seen.seen_rows(tmp_path / "m", ["a"]) is None  # not recorded ≠ saw nothing
    n = seen.record(tmp_path / "m", [pd.DataFrame({"text": ["Shares rise", "shares  rise", "Profit up"]})])
    assert n == 2 and seen.seen_rows(tmp_path / "m", ["profit UP", "new text"]).tolist() == [True, False]
    # what another model recorded is carried over (a classifier trained further, a distillation's teachers)
    (tmp_path / "n").mkdir()
    seen.record(tmp_path / "n", [pd.DataFrame({"text": ["Loss widens"]})], inherit=[tmp_path / "m", tmp_path / "nothing-recorded"])
    assert seen.seen_rows(tmp_path / "n", ["Loss widens", "Profit up", "x"]).tolist() == [True, True, False]
    assert seen.of(tmp_path / "n").dtype == np.uint64


def test_held_out_leaves_out_what_any_model_saw_and_refuses_when_nothing_is_left(tmp_path):
    data = tmp_path / "eval.parquet"
    pd.DataFrame({"id": list("abcd"), "text": ["t one", "t two", "t three", "t four"], "label": ["positive"] * 4}).to_parquet(data)
    for name, texts in (("a", ["t one"]), ("b", ["T  two", "t one"])):
        (tmp_path / name).mkdir()
        seen.record(tmp_path / name, [pd.DataFrame({"text": texts})])
    (tmp_path / "c").mkdir()
    path, counts = seen.held_out(data, [("A", tmp_path / "a"), ("B", tmp_path / "b"), ("C", tmp_path / "c")], tmp_path / "out.parquet")
    assert counts == {"A": 1, "B": 2, "C": None}
    assert pd.read_parquet(path)["id"].tolist() == ["c", "d"]
    assert seen.held_out(data, [("C", tmp_path / "c")], tmp_path / "none.parquet") == (data, {"C": None})  # nothing to leave out
    seen.record(tmp_path / "c", [pd.read_parquet(data)])
    with pytest.raises(DataError, match=r"every one of its 4 rows was a training or validation text of C \(4\)"):
        seen.held_out(data, [("C", tmp_path / "c")], tmp_path / "x.parquet")
