"""Distillation: an ensemble of tiny teachers taught to a student with half their layers (tasks/distill.py)."""

from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from lmops.config import DistillParams
from lmops.errors import UserError
from lmops.kinds import KINDS
from lmops.layout import Snapshot
from lmops.tasks.distill import distill, shrink, teacher_probs
from lmops.tasks.finetune import finetune
from lmops.tasks.predict import load_classifier, predict_logits

LABELS = ["negative", "neutral", "positive"]
SEQ = KINDS["sequence"]


@pytest.fixture(scope="module")
def teachers(tiny_lm, ingested, tmp_path_factory):
    _, pre, p = tiny_lm
    data = ingested[0]
    out = tmp_path_factory.mktemp("teachers")
    return [finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, p.finetune, seed, out / str(seed), progress=False)
            for seed in (0, 1)], p, data


def test_a_student_with_half_the_layers_learns_the_ensemble(teachers, tmp_path):
    (t0, t1), p, data = teachers
    dp = DistillParams(layers=[1], alpha=0.8, unlabeled_rows=20, epochs=6, lr=2e-3, batch_size=16)
    s = distill([t0.model_dir, t1.model_dir], data / "train.parquet", data / "validation.parquet", data / "corpus.parquet", LABELS, dp,
                p.finetune, 0, tmp_path, progress=False)
    assert (s.layers_kept, s.teacher_layers, s.unlabeled_rows) == ([1], 2, 20) and s.student_params < s.teacher_params
    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    assert model.config.num_hidden_layers == 1 and s.temperature is not None
    val = pd.read_parquet(data / "validation.parquet")
    student = predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, p.finetune.max_length, 64).argmax(-1)
    ours = f1_score(val["label"], [LABELS[i] for i in student.tolist()], labels=LABELS, average="macro", zero_division=0)
    assert ours == pytest.approx(s.val_macro_f1, abs=1e-3)  # the saved student is the best epoch's
    majority = f1_score(val["label"], [val["label"].value_counts().idxmax()] * len(val), labels=LABELS, average="macro", zero_division=0)
    assert ours > majority + 0.15, (ours, majority)



def test_the_soft_labels_teach_the_ensemble_and_the_gold_labels_do_not(teachers, tmp_path):
    """alpha = 1 (the teachers' soft labels alone) makes a student that predicts what the ensemble predicts;
    alpha = 0 (gold labels alone) one that does not: the KL term carries the teachers."""
    (t0, t1), p, data = teachers
    val = pd.read_parquet(data / "validation.parquet")["text"].tolist()
    ensemble = teacher_probs([t0.model_dir, t1.model_dir], val, LABELS, p.finetune, 1.0).argmax(-1)
    agree = {}
    for alpha in (0.0, 1.0):
        s = distill([t0.model_dir, t1.model_dir], data / "train.parquet", data / "validation.parquet", data / "corpus.parquet", LABELS,
                    DistillParams(layers=[1], alpha=alpha, unlabeled_rows=20, epochs=6, lr=2e-3, batch_size=16), p.finetune, 0,
                    tmp_path / str(alpha), progress=False)
        model, tok = load_classifier(s.model_dir, LABELS, SEQ)
        agree[alpha] = float((predict_logits(model, tok, val, SEQ, LABELS, p.finetune.max_length, 64).argmax(-1) == ensemble).float().mean())
    assert agree[1.0] >= 0.85 and agree[1.0] > agree[0.0] + 0.3, agree


def test_the_distill_stage_scores_student_and_teachers_on_the_same_test_rows(teachers, tmp_path, lmops_home):
    from lmops.tasks import stages

    (t0, t1), p, data = teachers
    p = p.model_copy(update={"distill": DistillParams(epochs=2, lr=2e-3, batch_size=16)})
    out = stages.distill(p, [t0.model_dir, t1.model_dir], Snapshot(data), tmp_path, names=["A", "B"])
    report = (tmp_path / "report.md").read_text()
    assert "1 of 2 layers" in report and "| student |" in report and "| A |" in report and "| B |" in report
    assert set(out["teachers"]) == {"A", "B"} and 0 <= out["student"]["macro_f1"] <= 1
    # the ensemble the student was taught is scored beside it: its calibrated probabilities averaged, on the same rows
    test = pd.read_parquet(data / "test.parquet")
    by_hand = teacher_probs([t0.model_dir, t1.model_dir], test["text"].tolist(), LABELS, p.finetune, 1.0).argmax(-1).tolist()
    expected = f1_score(test["label"], [LABELS[i] for i in by_hand], labels=LABELS, average="macro", zero_division=0)
    assert out["ensemble"]["macro_f1"] == pytest.approx(expected, abs=1e-6)
    assert f"| ensemble of the teachers | {expected:.4f} |" in report and "student − ensemble of the teachers: " in report
    assert out["student_minus_ensemble"]["diff"] == pytest.approx(out["student"]["macro_f1"] - out["ensemble"]["macro_f1"], abs=5e-5)  # rounded to 4 places


def test_layers_the_teacher_lacks_are_refused_naming_its_range(teachers):
    (t0, _), p, _ = teachers
    model, _ = load_classifier(t0.model_dir, LABELS, SEQ)
    with pytest.raises(UserError, match=r"the teacher has layers 0\.\.1"):
        shrink(model, [0, 5])


def test_the_pipeline_registers_the_distilled_student_through_the_gate(prefect_api, project, lmops_home):
    """distill.enabled: the fine-tuned model teaches a student in the run, and the student is what the gate judges
    and the registry records, with its lineage."""
    import json
    from pathlib import Path

    from lmops.config import load_params
    from lmops.flows.pipeline import pipeline
    from lmops.tasks import registry

    p = load_params(project / "params.yaml", overrides=["distill.enabled=true", "distill.epochs=2", "distill.lr=2e-3", "distill.batch_size=16"])
    out = pipeline(params=p.to_dict(), project_root=str(project))
    assert out["promoted"] and out["finetune"]["method"] == "full+distill"
    info = registry.show("finance-sentiment@champion")
    assert info["tags"]["finetune_method"] == "full+distill"
    local = registry.download_model(info["source"], Path(out["run_dir"]) / "check")
    assert json.loads((local / "config.json").read_text())["num_hidden_layers"] == 1  # the tiny teacher has 2
    run = Path(out["run_dir"])
    assert (run / "distill" / "loss.png").exists() and json.loads((run / "distill" / "distill.json").read_text())["layers_kept"] == [0]


def _trained_on_test_rows(model_dir, data, tmp_path, rows=5):
    """A copy of ``model_dir`` that records ``rows`` of the test split among its training texts: what a model trained
    with another split seed records (its weights are beside the point: the record is what is read)."""
    import shutil

    from lmops.tasks import seen

    copy = tmp_path / "other-split"
    shutil.copytree(model_dir, copy)
    seen.record(copy, [data / "train.parquet", data / "validation.parquet", pd.read_parquet(data / "test.parquet").head(rows)])
    return copy


def test_fine_tuning_records_the_texts_it_fitted_on_and_distillation_refuses_a_teacher_of_another_split(teachers, tmp_path):
    from lmops.tasks import seen

    (t0, _), p, data = teachers
    fitted = pd.concat([pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "validation.parquet")])["text"]
    assert seen.of(t0.model_dir).tolist() == seen.keys(fitted).tolist()
    assert not seen.seen_rows(t0.model_dir, pd.read_parquet(data / "test.parquet")["text"]).any()
    other = _trained_on_test_rows(t0.model_dir, data, tmp_path)
    with pytest.raises(UserError, match=r"trained or validated on 5 of the \d+ rows of this snapshot's test split"):
        distill([t0.model_dir, str(other)], data / "train.parquet", data / "validation.parquet", None, LABELS, DistillParams(epochs=1),
                p.finetune, 0, tmp_path / "student", progress=False)


def test_compare_and_the_gate_leave_out_the_test_rows_a_model_trained_on(teachers, tmp_path, lmops_home):
    """Scores on rows a model trained on are no test of it: `lmops compare` scores both models on the rows neither
    saw, and the gate compares a champion that trained on some test rows (another split) on the others."""
    import shutil

    from lmops.layout import RunLayout
    from lmops.tasks import registry, stages

    (t0, _), p, data = teachers
    other = _trained_on_test_rows(t0.model_dir, data, tmp_path)
    n_test = len(pd.read_parquet(data / "test.parquet"))
    ev = stages.evaluate(p, other, data / "test.parquet", tmp_path / "eval-other", "other on the test split")  # scored as asked, and said
    assert ev.report["seen_in_training"] == 5 and f"**5 of these {n_test} rows were training or validation texts" in Path(ev.report_path).read_text()
    out = stages.compare_models(p, [t0.model_dir], [other], data / "test.parquet", tmp_path / "compare", names=("A", "B"))
    assert out["seen_in_training"] == {"A": 0, "B": 5} and out["n"] == n_test - 5
    assert "Rows left out because a model was trained or validated on them — A: 0, B: 5." in (tmp_path / "compare" / "report.md").read_text()
    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(t0.model_dir, unrecorded)
    (unrecorded / "seen_texts.npy").unlink()
    out = stages.compare_models(p, [t0.model_dir], [unrecorded], data / "test.parquet", tmp_path / "compare2", names=("A", "old"))
    assert out["n"] == n_test and "Not recorded (trained before lmops kept it, or a base checkpoint): old." in Path(out["report"]).read_text()

    # the gate: that model is the champion, t0 the candidate
    run_id, source = registry.log_candidate("exp", "r", {"a": {"b": 1}}, {"macro_f1": 0.5}, {"data_version": "x.dir"}, {"model": other})
    registry.register_version(p.register_.model_name, run_id, source, {"data_version": "x.dir", "git_commit": "deadbeef"}, True, None)
    run = RunLayout(tmp_path / "run")
    shutil.copytree(data, run.data.dir)
    candidate = stages.evaluate(p, t0.model_dir, run.data.test, run.stage("evaluate"), "candidate")
    decision = stages.gate(p, run, candidate, t0.model_dir, tmp_path)
    assert decision.test.n == n_test - 5 and decision.test.left_out == 5 and decision.paired is not None
    assert decision.reasons[0] == f"champion v1 was trained or validated on 5 of the {n_test} test rows: the two are compared on the other {n_test - 5}"
    # the same weights on the same rows: the champion's score is the candidate's on those rows, not on the whole split
    assert decision.champion == pytest.approx(decision.paired) and decision.candidate == candidate.headline()
    assert decision.test.diff["macro_f1"]["diff"] == 0
