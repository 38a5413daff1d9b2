"""Distillation: an ensemble of tiny teachers taught to a student with half their layers (tasks/distill.py)."""

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
