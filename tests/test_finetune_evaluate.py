import json
import shutil
from pathlib import Path

import pytest
import torch
from sklearn.metrics import f1_score

from lmops.kinds import KINDS
from lmops.metrics import classification_report
from lmops.tasks.evaluate import evaluate_model
from lmops.tasks.finetune import finetune, initial_model
from lmops.tasks.predict import load_classifier, predict_logits

SEQ = KINDS["sequence"]

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def lora_run(tiny_lm, ingested, tmp_path_factory):
    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "lora", "epochs": 2, "lr": 5e-3})
    out = tmp_path_factory.mktemp("ft")
    return finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, out, progress=False), fp, data


def test_lora_trains_few_params_and_saves_adapter(lora_run):
    s, _, _ = lora_run
    assert s.method == "lora" and 0 < s.trainable_params < s.total_params / 5
    assert (Path(s.adapter_dir) / "adapter_model.safetensors").exists()
    assert (Path(s.model_dir) / "model.safetensors").exists() and not list(Path(s.model_dir).glob("*.bin"))
    assert 1 <= s.best_epoch <= 2 and len(s.history) == s.epochs_run
    # the default head (finetune.pooling: cls) leaves the config as transformers writes it
    assert "lmops_pooling" not in json.loads((Path(s.model_dir) / "config.json").read_text())


def test_reloaded_model_predicts_identically(lora_run):
    """The classifier head is saved with the merged model (a known PEFT pitfall if it is not)."""
    s, fp, data = lora_run
    import pandas as pd

    texts = pd.read_parquet(data / "test.parquet")["text"].tolist()
    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    a = predict_logits(model, tok, texts, SEQ, LABELS, fp.max_length, 32)
    model2, tok2 = load_classifier(s.model_dir, LABELS, SEQ)
    b = predict_logits(model2, tok2, texts, SEQ, LABELS, fp.max_length, 32)
    torch.testing.assert_close(a, b)
    # the adapter + base reproduce the merged model's predictions
    from peft import PeftModel

    base, _ = load_classifier(s.base_model, LABELS, SEQ)
    peft_model = PeftModel.from_pretrained(base, s.adapter_dir)
    from lmops.tasks import calibration

    peft_model.lmops_calibrator = calibration.load(s.model_dir)  # the merged folder carries its fitted calibrator; this bare adapter does not
    c = predict_logits(peft_model, tok, texts, SEQ, LABELS, fp.max_length, 32)
    assert (a.argmax(-1) == c.argmax(-1)).all()
    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_a_model_is_scored_as_it_was_trained_whatever_the_current_params(lora_run, tiny_lm, tmp_path, project):
    """Evaluation, the gate and compare read a model with the task and the length it was trained with (saved in its
    config), not with whatever finetune.max_length the params hold when it is scored; evaluate.max_length overrides."""
    import pandas as pd

    from lmops.errors import DataError
    from lmops.tasks import stages
    from tests.conftest import run_cli

    s, fp, data = lora_run
    _, _, p = tiny_lm
    cfg = json.loads((Path(s.model_dir) / "config.json").read_text())
    assert cfg["lmops_task"] == "sequence" and cfg["lmops_max_length"] == fp.max_length == 32
    test = data / "test.parquet"
    assert pd.read_parquet(test)["text"].str.split().str.len().max() > 8  # cut at 8 tokens, these headlines read otherwise

    def probs(r):
        return pd.read_parquet(r.predictions_path)["confidence"].round(5).tolist()

    at = {n: evaluate_model(Path(s.model_dir), test, LABELS, n, 64, tmp_path / f"direct{n}", SEQ) for n in (32, 8)}
    assert probs(at[32]) != probs(at[8])
    short_params = p.model_copy(update={"finetune": p.finetune.model_copy(update={"max_length": 8})})
    assert probs(stages.evaluate(short_params, s.model_dir, test, tmp_path / "a", "t")) == probs(at[32])
    chosen = p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"max_length": 8})})
    assert probs(stages.evaluate(chosen, s.model_dir, test, tmp_path / "b", "t")) == probs(at[8])
    assert stages.reading_length(p, tmp_path) == p.finetune.max_length  # a folder that does not say: params decide
    # a model of another task is an error where params fix the task (the gate, compare) ...
    tagger_params = p.model_copy(update={"finetune": p.finetune.model_copy(update={"task": "token"})})
    with pytest.raises(DataError, match="trained for finetune.task sequence"):
        stages.evaluate(tagger_params, s.model_dir, test, tmp_path / "c", "t")
    # ... and what a standalone `lmops evaluate MODEL` reads it as
    assert stages.for_model(tagger_params, s.model_dir).finetune.task == "sequence"
    assert stages.for_model(p, s.model_dir) is p
    # a user's file with its own column and label names, read through evaluate.* (as a gate set's fields)
    frame = pd.read_parquet(test)
    names = {"positive": "Bullish", "negative": "Bearish", "neutral": "Neutral"}
    mine = tmp_path / "mine.csv"
    pd.DataFrame({"sentence": frame["text"], "sentiment": frame["label"].map(names)}).to_csv(mine, index=False)
    out = run_cli("evaluate", s.model_dir, "--data", str(mine), "--json", "finetune.max_length=8", "evaluate.text_column=sentence",
                  "evaluate.label_column=sentiment", "evaluate.label_map={Bullish: positive, Bearish: negative, Neutral: neutral}",
                  cwd=project)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["read_as"] == {"task": "sequence", "labels": p.validate_.labels, "max_length": 32}
    assert res["n"] == len(frame) and res["macro_f1"] == pytest.approx(at[32].macro_f1, abs=1e-9)


def test_full_finetune_beats_chance_on_validation(tiny_lm, ingested, tmp_path):
    _, pre, p = tiny_lm
    data = ingested[0]
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, p.finetune, 0, tmp_path, progress=False)
    assert s.method == "full" and s.trainable_params == s.total_params
    assert s.history[-1]["train_loss"] < s.history[0]["train_loss"]
    # against the majority-class baseline on the same validation rows, recomputed here from the saved model
    import pandas as pd

    val = pd.read_parquet(data / "validation.parquet")
    majority = val["label"].value_counts().idxmax()
    baseline = f1_score(val["label"], [majority] * len(val), labels=LABELS, average="macro", zero_division=0)
    logits = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), val["text"].tolist(), SEQ, LABELS, p.finetune.max_length, 64)
    ours = f1_score(val["label"], [LABELS[i] for i in logits.argmax(-1).tolist()], labels=LABELS, average="macro", zero_division=0)
    assert ours == pytest.approx(s.val_macro_f1, abs=1e-3)  # the saved model is the best epoch's
    assert ours > baseline + 0.15, (ours, baseline)


def test_an_init_seed_gives_runs_of_other_seeds_the_same_starting_head(tiny_lm):
    _, pre, _ = tiny_lm

    def start(seed, init_seed):
        model, _ = initial_model(pre.model_dir, LABELS, SEQ, seed, init_seed)
        head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier")}
        assert head
        return head, torch.rand(4)  # what dropout would draw next

    (h1, r1), (h2, r2) = start(1, 5), start(2, 5)
    assert all(torch.equal(h1[k], h2[k]) for k in h1)  # one starting model for a soup of seeds 1 and 2
    torch.manual_seed(2)
    assert torch.equal(r2, torch.rand(4)) and not torch.equal(r1, r2)  # the rest follows each run's own seed
    # without it, as before: the head and dropout one stream of project.seed, so seeds start from different heads
    (g1, q1), (g2, _) = start(1, None), start(2, None)
    assert not all(torch.equal(g1[k], g2[k]) for k in g1)
    torch.manual_seed(1)
    load_classifier(pre.model_dir, LABELS, SEQ, train=True)
    assert torch.equal(q1, torch.rand(4))


def test_local_metric_module_matches_sklearn():
    refs = [0, 1, 2, 2, 1, 0, 2, 1]
    preds = [0, 2, 2, 1, 1, 0, 2, 0]
    r = classification_report(preds, refs, LABELS)
    assert r["accuracy"] == pytest.approx(5 / 8)
    assert r["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert r["averages"]["weighted"]["f1"] == pytest.approx(f1_score(refs, preds, average="weighted"))
    assert r["per_class"]["positive"]["support"] == 3
    assert r["confusion_matrix"][2] == [0, 1, 2]


def test_evaluate_writes_report_plot_and_predictions(lora_run, tmp_path):
    s, fp, data = lora_run
    r = evaluate_model(Path(s.model_dir), data / "test.parquet", LABELS, fp.max_length, 64, tmp_path, SEQ, title="t")
    import pandas as pd
    from sklearn.metrics import accuracy_score

    test = pd.read_parquet(data / "test.parquet")
    pred = pd.read_parquet(r.predictions_path)
    assert pred["id"].tolist() == test["id"].tolist() and pred["label"].tolist() == test["label"].tolist() and r.n == len(test)
    # the reported figures are those of the predictions written beside them, recomputed independently
    assert r.accuracy == pytest.approx(accuracy_score(pred["label"], pred["prediction"]), abs=1e-6)
    assert r.macro_f1 == pytest.approx(f1_score(pred["label"], pred["prediction"], labels=LABELS, average="macro", zero_division=0), abs=1e-6)
    saved = json.loads(Path(r.metrics_path).read_text())
    assert saved["accuracy"] == pytest.approx(r.accuracy) and sum(map(sum, saved["confusion_matrix"])) == r.n
    # and the predictions are the model's: the argmax of a fresh forward pass
    logits = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), test["text"].tolist(), SEQ, LABELS, fp.max_length, 32)
    assert pred["prediction"].tolist() == [LABELS[i] for i in logits.argmax(-1).tolist()]
    assert pred["confidence"].tolist() == pytest.approx(logits.softmax(-1).max(-1).values.tolist(), abs=1e-5)
    md = Path(r.report_path).read_text()
    assert "| negative |" in md and "macro avg" in md
    assert Path(r.confusion_plot).read_bytes()[:4] == b"\x89PNG"


def test_temperature_scaling_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z), logits reported as 3·z: the fitted temperature is ≈3 and the ECE falls."""
    from lmops.tasks import calibration

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 3, generator=g) * 1.5
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1).tolist()
    t = calibration.fit_temperature(z * 3, y)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = calibration.scores(z * 3, y), calibration.scores(z * 3 / t, y)
    assert after["ece"] < 0.03 < before["ece"] and after["nll"] < before["nll"]
    assert calibration.fit_temperature(z, y) == pytest.approx(1.0, rel=0.1)  # already calibrated: left about alone


def test_a_fitted_temperature_is_saved_with_the_model_and_applied_wherever_it_is_read(lora_run):
    import pandas as pd

    s, fp, data = lora_run
    cal = json.loads((Path(s.model_dir) / "calibration.json").read_text())
    assert cal["temperature"] == s.temperature > 0 and cal["fitted_on"] == "validation split"
    assert cal["validation_after"]["nll"] <= cal["validation_before"]["nll"] and s.val_ece == cal["validation_after"]["ece"]
    val = pd.read_parquet(data / "validation.parquet")
    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    served = predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, fp.max_length, 32)
    model.lmops_calibrator = None
    raw = predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, fp.max_length, 32)
    torch.testing.assert_close(served, raw / s.temperature)
    y = torch.as_tensor(SEQ.targets(val, LABELS))
    nll = lambda t: float(torch.nn.functional.cross_entropy(raw / t, y))  # noqa: E731
    # the fitted T minimises the validation NLL (this tiny model is near chance, so it may sit at the grid's top, ~32)
    assert nll(s.temperature) <= min(nll(s.temperature / 1.05), nll(1.0)) + 1e-6
    assert s.temperature > 31 or nll(s.temperature) <= nll(s.temperature * 1.05) + 1e-6



def _miscalibrated(n, seed):
    """Logits whose top label is right with probability 0.55 + 0.4·(c − 1/3)/(2/3) at confidence c (wrong: another
    label at random): over-confident near 1, under-confident in the middle — a shape one temperature cannot fix
    (it softens both ends), as fine-tuned MiniLM shows on SEntFiN."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g) * 3.0
    p = z.softmax(-1)
    c, top = p.max(-1)
    right = torch.rand(n, generator=g) < 0.55 + 0.4 * (c - 1 / 3) / (2 / 3)
    other = (top + torch.randint(1, 3, (n,), generator=g)) % 3
    return z.numpy(), torch.where(right, top, other).tolist()


def test_isotonic_calibration_fixes_what_a_temperature_cannot_on_fresh_draws():
    import numpy as np

    from lmops.tasks import calibration

    fit_z, fit_y = _miscalibrated(3000, 0)
    held_z, held_y = _miscalibrated(3000, 1)  # scored on draws the calibrators never saw
    temp = calibration.Temperature.fit(fit_z, fit_y)
    iso = calibration.Isotonic.fit(fit_z, fit_y)
    assert iso.temperature == temp.temperature and np.all(np.diff(iso.x) > 0) and np.all(np.diff(iso.y) >= 0)  # monotone
    assert max(iso.y) <= 1 - 1 / 3002
    raw, t, b = (calibration.scores(c.apply(held_z), held_y) for c in (calibration.Identity(), temp, iso))
    assert min(t["ece"], raw["ece"]) > 0.04 and b["ece"] < 0.025
    assert b["nll"] < t["nll"] < raw["nll"]  # a proper score improves too: not an artefact of the binned ECE
    # an already calibrated input is left about alone
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 3, generator=g) * 1.5
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1).tolist()
    same = calibration.Isotonic.fit(z.numpy(), y)
    assert same.temperature == pytest.approx(1.0, rel=0.1) and calibration.scores(same.apply(z.numpy()), y)["ece"] < 0.02


def test_isotonic_calibration_never_changes_a_prediction_and_gives_distributions():
    import numpy as np

    from lmops.tasks import calibration

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 4, (500, 3)), [[0, 0, 0], [50, -50, 0], [1, 1, -9], [-1e4, 1e4, 0]]]).astype(np.float32)
    low, high, steps = (calibration.Isotonic(t, (0.0, 1.0), ys) for t, ys in ((1.0, (0.0, 0.0)), (0.5, (1.0, 1.0)), (2.0, (0.2, 0.9))))
    for harsh in (low, high, steps):
        out = harsh.apply(z)
        assert out.dtype == z.dtype and np.isfinite(out).all()
        p = np.exp(out)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        assert (out.argmax(-1) == z.argmax(-1)).all()
    # the identity map (T 1, knots on the diagonal) returns the softmax's own log-probabilities
    z64 = z[:500].astype(np.float64)
    same = calibration.Isotonic(1.0, (0.0, 1.0), (0.0, 1.0)).apply(z64)
    np.testing.assert_allclose(same, z64 - np.log(np.exp(z64).sum(-1, keepdims=True)), atol=1e-6)
    assert calibration.Isotonic.fit(np.zeros((0, 3)), []) == calibration.Isotonic(1.0)  # nothing to fit: a no-op


def test_an_isotonic_calibrator_is_saved_with_the_model_and_applied_by_torch_and_onnx(lora_run, tmp_path):
    """finetune.calibration: isotonic → the same calibrated probabilities from load_classifier and the monitor's ONNX
    scorer; a file written before the method existed still reads as a temperature."""
    import shutil

    import numpy as np
    import pandas as pd

    from lmops.tasks import calibration
    from lmops.tasks.monitor.export import to_onnx
    from lmops.tasks.monitor.runtime import OnnxScorer

    s, fp, data = lora_run
    folder = tmp_path / "model"
    shutil.copytree(s.model_dir, folder)
    texts = pd.read_parquet(data / "validation.parquet")["text"].tolist()
    model, tok = load_classifier(str(folder), LABELS, SEQ)
    model.lmops_calibrator = None
    raw = predict_logits(model, tok, texts, SEQ, LABELS, fp.max_length, 32).numpy()
    cal = calibration.Isotonic(1.3, (0.34, 0.5, 0.9), (0.45, 0.6, 0.8))
    calibration.write(folder, cal, {}, {})
    assert calibration.load(folder) == cal and json.loads((folder / "calibration.json").read_text())["method"] == "isotonic"
    want = torch.as_tensor(cal.apply(raw)).softmax(-1)
    served = predict_logits(*load_classifier(str(folder), LABELS, SEQ), texts, SEQ, LABELS, fp.max_length, 32).softmax(-1)
    torch.testing.assert_close(served, want, atol=1e-5, rtol=1e-4)
    onnx_dir = tmp_path / "onnx"
    to_onnx(folder, onnx_dir, fp.max_length).rename(onnx_dir / "model.onnx")
    np.testing.assert_allclose(OnnxScorer(onnx_dir).probabilities(texts, 8, fp.max_length), want.numpy(), atol=1e-4)
    (folder / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.5, "fitted_on": "validation split"}))
    assert calibration.load(folder) == calibration.Temperature(2.5) and calibration.temperature(folder) == 2.5
    (folder / "calibration.json").unlink()
    assert calibration.load(folder) == calibration.Identity() and calibration.temperature(folder) == 1.0

def test_a_mean_pooled_classifier_trains_and_reads_back_the_same_in_torch_and_onnx(tiny_lm, ingested, tmp_path):
    """finetune.pooling: mean — the logits are the head over the mean of the last states of the real tokens, whatever
    the padding; saved in the config, so load_classifier and the ONNX export read the model as it was trained."""
    import numpy as np
    import pandas as pd
    from transformers import AutoModelForSequenceClassification

    from lmops.errors import UserError
    from lmops.tasks.monitor.export import to_onnx
    from lmops.tasks.monitor.runtime import OnnxScorer
    from lmops.tasks.pooling import set_pooling

    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "lora", "pooling": "mean", "epochs": 1, "lr": 5e-3, "calibration": "none"})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    assert json.loads((Path(s.model_dir) / "config.json").read_text())["lmops_pooling"] == "mean"
    texts = pd.read_parquet(data / "test.parquet")["text"].tolist()[:24]
    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    got = predict_logits(model, tok, texts, SEQ, LABELS, fp.max_length, 8)
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=fp.max_length, return_tensors="pt")
        states = model.base_model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        want = model.classifier((states * mask).sum(1) / mask.sum(1))
        own = AutoModelForSequenceClassification.from_pretrained(s.model_dir).eval()(**enc).logits  # the class's forward: the first token
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predict_logits(model, tok, texts, SEQ, LABELS, fp.max_length, 1), got, atol=1e-5, rtol=1e-4)  # unpadded
    assert (own - got).abs().max() > 1e-2  # reading the saved choice is what makes these logits
    onnx_dir = tmp_path / "onnx"
    to_onnx(Path(s.model_dir), onnx_dir, fp.max_length).rename(onnx_dir / "model.onnx")
    np.testing.assert_allclose(OnnxScorer(onnx_dir).probabilities(texts, 8, fp.max_length), got.softmax(-1).numpy(), atol=1e-4)
    set_pooling(model, "cls")  # back to the class's own head (a fine-tuning of this model with pooling: cls)
    torch.testing.assert_close(predict_logits(model, tok, texts, SEQ, LABELS, fp.max_length, 8), own, atol=1e-5, rtol=1e-4)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(model.config.hidden_size, 3))
    with pytest.raises(UserError, match="finetune.pooling: mean needs a classifier that is one linear layer"):
        set_pooling(model, "mean")


def test_the_probe_picks_the_penalty_on_validation_and_prefers_the_stronger_on_ties():
    from lmops.tasks.probe import STRENGTHS, fit_head

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    y = [i % 3 for i in range(300)]
    x = centers[y] + torch.randn(300, 16, generator=g)
    best = fit_head(x[:240], y[:240], x[240:], y[240:], 3)
    # three well-separated clusters: every strength is perfect on validation, so the strongest is kept
    assert best["val_macro_f1"] == 1.0 and best["strength"] == max(STRENGTHS)
    assert best["weight"].shape == (3, 16) and best["bias"].shape == (3,)
    # labels with no relation to the features: nothing fits validation above chance by much
    noise = fit_head(x[:240], [int(v) for v in torch.randint(0, 3, (240,), generator=g)], x[240:], y[240:], 3)
    assert noise["val_macro_f1"] < 0.6


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_linear_probe_sets_the_head_the_model_then_predicts_with(tiny_lm, ingested, pooling):
    """finetune.linear_probe: the head fitted on frozen features is the model's own head afterwards — its validation
    macro-F1 as the probe reported it is what the model predicts — whichever pooling the features came from."""
    import pandas as pd

    from lmops.metrics import macro_f1
    from lmops.tasks.pooling import set_pooling
    from lmops.tasks.probe import probe

    _, pre, p = tiny_lm
    data = ingested[0]
    train, val = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "validation.parquet")
    model, tok = load_classifier(pre.model_dir, LABELS, SEQ, train=True)
    set_pooling(model, pooling)
    y, y_val = SEQ.targets(train, LABELS), SEQ.targets(val, LABELS)
    before = macro_f1(y_val, predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, 64, 32).argmax(-1).tolist(), 3)
    got = probe(model, tok, SEQ, train["text"].tolist(), y, val["text"].tolist(), y_val, 3, 64, "none")
    after = macro_f1(y_val, predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, 64, 32).argmax(-1).tolist(), 3)
    assert after == pytest.approx(got["val_macro_f1"], abs=1e-4) and after > before, (before, got)


def test_a_fine_tuning_after_a_linear_probe_reports_it(tiny_lm, ingested, tmp_path):
    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "full", "linear_probe": True, "epochs": 1, "calibration": "none"})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())["linear_probe"]
    assert saved == s.linear_probe and 0.3 < saved["val_macro_f1"] <= 1 and saved["strength"] > 0


def test_frozen_word_embeddings_stay_as_pretrained_while_the_rest_trains(tiny_lm, ingested, tmp_path):
    from safetensors.torch import load_file

    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "full", "freeze_embeddings": True, "epochs": 1, "calibration": "none"})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    base, tuned = load_file(Path(pre.model_dir) / "model.safetensors"), load_file(Path(s.model_dir) / "model.safetensors")
    words = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(base[words], tuned[words]) and s.trainable_params == s.total_params - base[words].numel()
    for trained in ("bert.embeddings.position_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(base[trained], tuned[trained]), trained


def test_token_masking_hides_a_share_of_word_pieces_never_the_special_ones_and_only_in_training(tiny_lm, ingested, tmp_path, monkeypatch):
    from lmops.models import load_tokenizer
    from lmops.tasks import finetune as ft_module

    _, pre, p = tiny_lm
    tok = load_tokenizer(pre.model_dir)
    ids = tok(["shares of infosys jump after strong results"] * 200 + ["up"], padding=True, return_tensors="pt")["input_ids"]
    out = ft_module.mask_tokens(ids, tok, 0.25, torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert torch.equal(out[special], ids[special]) and (out[out != ids] == tok.mask_token_id).all()
    assert 0.22 < ((out != ids).sum() / (~special).sum()).item() < 0.28
    assert torch.equal(out, ft_module.mask_tokens(ids, tok, 0.25, torch.Generator().manual_seed(0)))  # seeded
    # in a fine-tuning: once per training step, never when validating
    calls = []
    real = ft_module.mask_tokens
    monkeypatch.setattr(ft_module, "mask_tokens", lambda *a: calls.append(a[0].shape) or real(*a))
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "full", "token_mask": 0.1, "epochs": 1, "calibration": "none"})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    assert len(calls) == -(-s.train_rows // fp.batch_size) and calls[0][0] == fp.batch_size


def test_interpolation_towards_the_base_keeps_the_weights_best_on_validation(tiny_lm, ingested, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lmops.tasks import finetune as ft_module
    from lmops.tasks.predict import load_classifier

    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "full", "epochs": 1, "calibration": "none"})
    args = (data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS)
    plain = finetune(*args, fp, 0, tmp_path / "plain", progress=False)
    s = finetune(*args, fp.model_copy(update={"interpolate": [0.5, 0.0]}), 0, tmp_path / "wise", progress=False)
    scores = s.interpolation["scores"]
    assert set(scores) == {1.0, 0.5, 0.0} and scores[1.0] == plain.val_select  # the same training, then the mixes scored
    best = max(scores.values())
    alpha = max(a for a, v in scores.items() if v == best)  # ties go to the weights closer to the trained ones
    assert s.interpolation["alpha"] == alpha and s.val_select == best
    # a tiny model scores every mix alike, so validation (its selection score) is made to prefer the half-way mix:
    # one call after the epoch, then alpha 0.5, then 0.0
    told = iter([0.5, 0.9, 0.1])
    monkeypatch.setattr(ft_module, "selection_score", lambda *a: next(told))
    s = finetune(*args, fp.model_copy(update={"interpolate": [0.5, 0.0]}), 0, tmp_path / "half", progress=False)
    assert s.interpolation == {"alpha": 0.5, "scores": {1.0: 0.5, 0.5: 0.9, 0.0: 0.1}} and s.val_select == 0.9
    torch.manual_seed(0)  # the classifier as fine-tuning starts from it (its pooler and head drawn from the seed)
    start = load_classifier(pre.model_dir, LABELS, fp.kind, train=True)[0].state_dict()
    trained, saved = (load_file(Path(d) / "model.safetensors") for d in (plain.model_dir, s.model_dir))
    for k, t in saved.items():  # the encoder half-way back to where it started, the head as trained
        expected = 0.5 * trained[k] + 0.5 * start[k] if k.startswith("bert.") else trained[k]
        assert torch.allclose(t, expected, atol=1e-6), k
    assert not torch.allclose(saved["bert.encoder.layer.0.attention.self.query.weight"], trained["bert.encoder.layer.0.attention.self.query.weight"])
    # the mixing itself, towards an all-zero anchor, on a model loaded for prediction
    model, _ = load_classifier(plain.model_dir, LABELS, fp.kind)
    anchor = {k: torch.zeros_like(v) for k, v in ft_module.encoder_weights(model).items()}
    assert anchor and not any(k.startswith("classifier") for k in anchor)
    picks = iter([(0.1, {"macro": 0.1}), (0.9, {"macro": 0.9})])  # tried from the largest alpha down
    info, chosen = ft_module.interpolate(model, anchor, [0.25, 0.5], lambda: next(picks), 0.5)
    assert info == {"alpha": 0.25, "scores": {1.0: 0.5, 0.5: 0.1, 0.25: 0.9}} and chosen[0] == 0.9
    now = model.state_dict()
    assert all(torch.allclose(now[k], 0.25 * trained[k]) for k in anchor) and torch.equal(now["classifier.weight"], trained["classifier.weight"])


def test_calibration_module_ece():
    import evaluate

    from lmops.metrics import metric_path

    m = evaluate.load(metric_path("calibration"))
    # perfectly calibrated: 80% confident and 80% right → ECE 0
    assert m.compute(confidences=[0.8] * 10, correct=[1] * 8 + [0] * 2)["ece"] == pytest.approx(0.0)
    # always 90% confident, always wrong → ECE 0.9
    assert m.compute(confidences=[0.9] * 4, correct=[0] * 4)["ece"] == pytest.approx(0.9)



def test_the_ece_interval_brackets_the_metric_and_narrows_with_more_rows():
    import evaluate
    import numpy as np

    from lmops.metrics import bootstrap_ece, metric_path

    m = evaluate.load(metric_path("calibration"))
    rng = np.random.default_rng(0)
    widths = []
    for n in (300, 3000):
        conf = np.round(rng.uniform(0.34, 1.0, n), 1)  # many values exactly on bin edges: binned as the metric bins them
        right = (rng.random(n) < conf - 0.05).astype(int)  # 5 points over-confident
        point = m.compute(confidences=conf.tolist(), correct=right.tolist())["ece"]
        lo, hi = bootstrap_ece(conf, right)
        assert lo <= point <= hi and lo < 0.05 + 0.03 and hi > 0.05 - 0.03
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2

def test_bootstrap_diff_sees_a_real_improvement_and_not_noise():
    import numpy as np

    from lmops.metrics import bootstrap_diff

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400).tolist()
    weak = [t if rng.random() < 0.6 else (t + 1) % 3 for t in y]
    strong = [t if rng.random() < 0.9 else (t + 1) % 3 for t in y]
    better = bootstrap_diff(y, weak, strong, LABELS, n=300)
    assert better["accuracy"]["diff"] > 0.2 and better["accuracy"]["ci95"][0] > 0
    same = bootstrap_diff(y, weak, weak, LABELS, n=50)
    assert same["macro_f1"]["diff"] == 0 and same["macro_f1"]["ci95"] == [0.0, 0.0]


def test_several_runs_per_side_score_their_mean_and_widen_the_interval_by_their_spread():
    """Two seeds of a recipe can differ by more than the row bootstrap's interval: resampling the runs too shows it."""
    import numpy as np
    from sklearn.metrics import f1_score

    from lmops.metrics import bootstrap_diff, bootstrap_diff_runs

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600).tolist()
    run = lambda right: [t if rng.random() < right else (t + 1) % 3 for t in y]  # noqa: E731
    a1, a2, b1, b2 = run(0.70), run(0.70), run(0.85), run(0.65)  # B's two seeds disagree by 20 points
    f1 = lambda p: f1_score(y, p, average="macro")  # noqa: E731
    both = bootstrap_diff_runs(y, [a1, a2], [b1, b2], LABELS, n=300)
    assert both["runs"] == {"a": 2, "b": 2}
    assert both["macro_f1"]["diff"] == pytest.approx((f1(b1) + f1(b2) - f1(a1) - f1(a2)) / 2, abs=1e-4)
    width = lambda d: d["macro_f1"]["ci95"][1] - d["macro_f1"]["ci95"][0]  # noqa: E731
    one = bootstrap_diff(y, a1, b1, LABELS, n=300)
    assert one["macro_f1"]["ci95"][0] > 0  # one seed each: B "distinguishably better"
    assert width(both) > 2 * width(one) and both["macro_f1"]["ci95"][0] < 0  # with both seeds: not distinguishable


def test_the_paired_bootstrap_equals_its_sklearn_definition_draw_for_draw():
    """The paired bootstrap scores macro-F1 from one bincount per draw; the definition is sklearn's f1_score (every
    label counted, 0 where a class is neither present nor predicted), computed here with the same draws."""
    import numpy as np
    from sklearn.metrics import f1_score

    from lmops.metrics import _macro_f1, bootstrap_diff_runs

    rng = np.random.default_rng(1)
    for n, k in [(1, 3), (7, 3), (50, 5), (300, 3)] * 25:
        y, p = rng.integers(0, k, n), rng.integers(0, k - 1, n)  # the last class never predicted, some never present
        assert _macro_f1(y, p, k) == pytest.approx(f1_score(y, p, labels=list(range(k)), average="macro", zero_division=0), abs=1e-12)
    y = rng.integers(0, 3, 200)
    runs_a, runs_b = [rng.integers(0, 3, 200) for _ in range(2)], [np.where(rng.random(200) < 0.7, y, (y + 1) % 3)]
    got = bootstrap_diff_runs(y.tolist(), [r.tolist() for r in runs_a], [r.tolist() for r in runs_b], LABELS, n=200, seed=3)
    r = np.random.default_rng(3)  # the reference: the same draws in the same order, scored by sklearn

    def arm(runs, pick, idx):
        return (np.mean([(runs[j][idx] == y[idx]).mean() for j in pick]),
                np.mean([f1_score(y[idx], runs[j][idx], labels=[0, 1, 2], average="macro", zero_division=0) for j in pick]))

    draws = []
    for _ in range(200):
        idx, pick_a, pick_b = r.integers(0, 200, 200), r.integers(0, 2, 2), [0]
        (acc_a, f1_a), (acc_b, f1_b) = arm(runs_a, pick_a, idx), arm(runs_b, pick_b, idx)
        draws.append((acc_b - acc_a, f1_b - f1_a))
    for j, name in enumerate(("accuracy", "macro_f1")):
        assert got[name]["ci95"] == [round(float(v), 4) for v in np.percentile(np.array(draws)[:, j], [2.5, 97.5])]
        assert got[name]["p_b_not_better"] == round(float((np.array(draws)[:, j] <= 0).mean()), 4)


def test_entity_bootstrap_resamples_sentences_and_scores_spans_like_seqeval():
    import numpy as np
    from seqeval.metrics import accuracy_score, f1_score

    from lmops.metrics import bootstrap_diff_entities

    rng = np.random.default_rng(0)
    refs = [["B-ORG", "I-ORG", "O", "B-PER", "O", "B-LOC"] for _ in range(150)]

    def noisy(keep: float) -> list[list[str]]:  # drop each entity with probability 1 - keep
        out = []
        for r in refs:
            p = list(r)
            for start, end in ((0, 2), (3, 4), (5, 6)):
                if rng.random() > keep:
                    p[start:end] = ["O"] * (end - start)
            out.append(p)
        return out

    weak, strong = noisy(0.5), noisy(0.95)
    d = bootstrap_diff_entities(refs, weak, strong, n=300)
    assert d["micro_f1"]["diff"] == pytest.approx(f1_score(refs, strong) - f1_score(refs, weak), abs=1e-4)
    assert d["accuracy"]["diff"] == pytest.approx(accuracy_score(refs, strong) - accuracy_score(refs, weak), abs=1e-4)
    assert d["micro_f1"]["ci95"][0] > 0 and d["unit"] == "sentence" and d["n_test"] == 150
    same = bootstrap_diff_entities(refs, weak, weak, n=50)
    assert same["micro_f1"]["diff"] == 0 and same["micro_f1"]["ci95"] == [0.0, 0.0]


def test_evaluation_report_has_ece_and_slices(lora_run, tmp_path):
    import pandas as pd

    s, fp, data = lora_run
    test = pd.read_parquet(data / "test.parquet")
    test.loc[test.index[: len(test) // 2], "source"] = "other"
    test.to_parquet(tmp_path / "two_sources.parquet", index=False)
    r = evaluate_model(Path(s.model_dir), tmp_path / "two_sources.parquet", LABELS, fp.max_length, 64, tmp_path / "ev", SEQ)
    assert 0 <= r.ece <= 1 and set(r.report["slices"]) == {"sentfin", "other"}
    assert sum(v["n"] for v in r.report["slices"].values()) == r.n
    assert "slice `other`" in Path(r.report_path).read_text()


@pytest.mark.parametrize("method", ["ia3", "prompt"])
def test_other_peft_methods_train_save_and_reload_identically(method, tiny_lm, ingested, tmp_path):
    import pandas as pd

    import shutil

    _, pre, p = tiny_lm
    data = ingested[0]
    base = tmp_path / "pretrain-run" / "model"  # a run folder that retention may prune later
    shutil.copytree(pre.model_dir, base)
    fp = p.finetune.model_copy(update={"method": method, "epochs": 1, "lr": 1e-2, "virtual_tokens": 4})
    s = finetune(data / "train.parquet", data / "validation.parquet", str(base), LABELS, fp, 0, tmp_path / "ft", progress=False)
    assert s.method == method and 0 < s.trainable_params < s.total_params
    texts = pd.read_parquet(data / "test.parquet")["text"].tolist()[:40]
    a = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), texts, SEQ, LABELS, fp.max_length, 16)
    shutil.rmtree(tmp_path / "pretrain-run")  # the model folder is self-contained: it loads the same without its base run
    b = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), texts, SEQ, LABELS, fp.max_length, 16)
    torch.testing.assert_close(a, b)
    # what the folder is travels with it too (a soft-prompt folder: in its embedded base's config)
    from lmops.tasks.predict import saved_max_length, saved_task

    assert (saved_task(s.model_dir), saved_max_length(s.model_dir)) == ("sequence", fp.max_length)


def test_prefix_tuning_on_bert_is_a_clear_user_error(tiny_lm, ingested, tmp_path):
    from lmops.errors import UserError

    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": "prefix", "epochs": 1})
    with pytest.raises(UserError, match="prefix tuning needs a model that accepts past key values.*prompt"):
        finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path, progress=False)


def test_language_model_perplexity_local_metric_and_cli(tiny_lm, ingested, project, tmp_path):
    import math

    from transformers import AutoModelForMaskedLM

    from lmops.tasks.evaluate import evaluate_language_model, language_model_objective
    from tests.conftest import FIXTURES, run_cli

    _, pre, p = tiny_lm
    data = ingested[0] / "test.parquet"
    a = evaluate_language_model(Path(pre.model_dir), data, 32, 16, tmp_path / "a", seed=1)
    b = evaluate_language_model(Path(pre.model_dir), data, 32, 16, tmp_path / "b", seed=1)
    assert a == {**b, "data": a["data"]} and a["objective"] == "mlm" and a["pseudo"]
    assert math.isclose(a["perplexity"], math.exp(a["eval_loss"]), rel_tol=1e-3) and a["predicted_tokens"] > 100
    # an untrained copy of the same architecture is more perplexed (the session model saw only 12 steps)
    fresh = AutoModelForMaskedLM.from_config(AutoModelForMaskedLM.from_pretrained(pre.model_dir).config)
    fresh.save_pretrained(tmp_path / "fresh")
    from lmops.models import load_tokenizer

    load_tokenizer(pre.model_dir).save_pretrained(tmp_path / "fresh")
    c = evaluate_language_model(tmp_path / "fresh", data, 32, 16, tmp_path / "c", seed=1)
    assert c["perplexity"] > 1.05 * a["perplexity"]
    assert language_model_objective(tmp_path / "fresh") == "mlm"
    out = run_cli("evaluate", pre.model_dir, "--data", str(FIXTURES / "twitter_sample.csv"), "--json", cwd=project)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # 150 tweets, one a near-duplicate of another (the same tweet with a t.co link appended)
    assert res["objective"] == "mlm" and res["texts"] == 149 and res["perplexity"] > 1


def test_readback_refuses_a_logged_model_that_predicts_otherwise(lora_run, tmp_path, lmops_home):
    """The register step reads the logged model back from the artifact store; if it does not reproduce the
    evaluated predictions (a wrong file logged, a corrupted upload), nothing is registered."""
    import pandas as pd

    from lmops.errors import RegistryError
    from lmops.tasks.readback import check_readback

    s, fp, data = lora_run
    r = evaluate_model(Path(s.model_dir), data / "test.parquet", LABELS, fp.max_length, 64, tmp_path / "ev", SEQ)
    source = Path(s.model_dir).as_uri()
    assert check_readback(source, Path(r.predictions_path), data / "test.parquet", LABELS, fp.max_length, tmp_path / "ok", SEQ) > 0
    pred = pd.read_parquet(r.predictions_path)
    flipped = pred.assign(prediction=[LABELS[(LABELS.index(x) + 1) % 3] for x in pred["prediction"]])
    flipped.to_parquet(tmp_path / "other.parquet", index=False)
    with pytest.raises(RegistryError, match=r"disagrees with the evaluated candidate on \d+/\d+ test rows"):
        check_readback(source, tmp_path / "other.parquet", data / "test.parquet", LABELS, fp.max_length, tmp_path / "bad", SEQ)


def test_a_saved_model_is_read_with_its_own_label_order(lora_run, tmp_path):
    """The gate scores the champion with today's validate.labels: a reordered list must not scramble a saved
    model's predictions (it would score the champion near chance and let any candidate past it), and a
    label set the model was not trained on is an error naming both."""
    import pandas as pd

    from lmops.errors import DataError

    s, fp, data = lora_run
    ref = evaluate_model(Path(s.model_dir), data / "test.parquet", LABELS, fp.max_length, 64, tmp_path / "a", SEQ)
    reordered = ["positive", "negative", "neutral"]
    other = evaluate_model(Path(s.model_dir), data / "test.parquet", reordered, fp.max_length, 64, tmp_path / "b", SEQ)
    assert other.accuracy == ref.accuracy and other.macro_f1 == pytest.approx(ref.macro_f1, abs=1e-9)
    assert pd.read_parquet(other.predictions_path)["prediction"].tolist() == pd.read_parquet(ref.predictions_path)["prediction"].tolist()
    renamed = pd.read_parquet(data / "test.parquet").replace({"label": {"negative": "bearish", "positive": "bullish"}})
    renamed.to_parquet(tmp_path / "renamed.parquet", index=False)
    with pytest.raises(DataError, match=r"predicts the labels \['negative', 'neutral', 'positive'\], but validate.labels is \['bearish'"):
        evaluate_model(Path(s.model_dir), tmp_path / "renamed.parquet", ["bearish", "neutral", "bullish"], fp.max_length, 64, tmp_path / "c", SEQ)


def test_source_sampler_mixes_sources_by_their_share_and_walks_each_without_replacement():
    import numpy as np

    from lmops.errors import UserError
    from lmops.tasks.finetune import SourceSampler

    sources = np.array(["big"] * 900 + ["small"] * 100, dtype=object)
    plain = SourceSampler(sources, 1.0, {}, np.random.default_rng(3))
    assert plain.plain and (plain.epoch() == np.random.default_rng(3).permutation(1000)).all()  # single-source behaviour, draw for draw
    assert np.allclose(plain.row_weights(), 1.0)

    s = SourceSampler(sources, 0.5, {}, np.random.default_rng(0))
    assert s.share == pytest.approx({"big": 0.75, "small": 0.25})  # 30 : 10
    assert s.draws() == {"big": 750, "small": 250} and s.row_weights().sum() == pytest.approx(1000)
    first, second = s.epoch(), s.epoch()
    assert len(first) == 1000 and (sources[first] == "small").sum() == 250
    small = np.bincount(first[sources[first] == "small"], minlength=1000)[900:]
    assert small.min() == 2 and small.max() == 3  # every small row twice before any a third time
    big_seen = np.bincount(np.concatenate([first, second]), minlength=1000)[:900]
    assert big_seen.min() >= 1 and big_seen.max() <= 2  # 1,500 draws of 900 rows: all seen, none three times
    assert len(set(first[sources[first] == "big"].tolist())) == 750  # no repeat within an epoch

    off = SourceSampler(sources, 1.0, {"small": 0.0}, np.random.default_rng(0))
    assert not off.plain and set(sources[off.epoch()]) == {"big"}
    with pytest.raises(UserError, match=r"finetune.sampling.weights names \['tweets'\]"):
        SourceSampler(sources, 1.0, {"tweets": 2.0}, np.random.default_rng(0))
    with pytest.raises(UserError, match="no source to train on"):
        SourceSampler(sources, 1.0, {"small": 0.0, "big": 0.0}, np.random.default_rng(0))


def test_early_stopping_can_weigh_every_source_of_the_validation_split(tiny_lm, ingested, tmp_path):
    import numpy as np
    import pandas as pd

    from lmops.tasks.finetune import selection_score

    assert selection_score(0.8, {"a": 0.9, "b": 0.5}, "pooled") == 0.8
    assert selection_score(0.8, {"a": 0.9, "b": 0.5}, "source_mean") == pytest.approx(0.7)
    assert selection_score(0.8, {"a": 0.9, "b": 0.5}, "worst_source") == 0.5
    assert selection_score(0.8, {"a": 0.9}, "worst_source") == 0.8

    _, pre, p = tiny_lm
    data = ingested[0]
    for split in ("train", "validation"):
        frame = pd.read_parquet(data / f"{split}.parquet")
        frame.loc[frame.index[::3], "source"] = "tweets"
        frame.to_parquet(tmp_path / f"{split}.parquet", index=False)
    fp = p.finetune.model_copy(update={"epochs": 2, "patience": 5, "select_on": "worst_source",
                                       "sampling": p.finetune.sampling.model_copy(update={"alpha": 0.0})})
    s = finetune(tmp_path / "train.parquet", tmp_path / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    for h in s.history:
        assert set(h["val_by_source"]) == {"sentfin", "tweets"}
        assert h["val_select"] == pytest.approx(min(h["val_by_source"].values()), abs=1e-4)
    assert s.best_epoch == 1 + max(range(len(s.history)), key=lambda i: s.history[i]["val_select"])
    assert s.val_select == pytest.approx(s.history[s.best_epoch - 1]["val_select"], abs=1e-4)  # what a sweep's val_select objective reads
    from lmops.tasks.registry import training_curves

    curves = training_curves([], s.history)  # what the MLflow run plots: a validation curve per source
    assert [v for _, v in curves["finetune/val_by_source.tweets"]] == [h["val_by_source"]["tweets"] for h in s.history]
    # the saved model is the best epoch's: its per-source scores, recomputed, are that epoch's
    val = pd.read_parquet(tmp_path / "validation.parquet")
    logits = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), val["text"].tolist(), SEQ, LABELS, fp.max_length, 64)
    for name, score in s.history[s.best_epoch - 1]["val_by_source"].items():
        rows = (val["source"] == name).to_numpy()
        ref = [LABELS.index(l) for l in val["label"][rows]]
        assert f1_score(ref, logits[torch.as_tensor(np.flatnonzero(rows))].argmax(-1).tolist(), labels=[0, 1, 2], average="macro", zero_division=0) == pytest.approx(score, abs=1e-3)


def test_weight_average_is_an_ema_with_warmup_and_is_swapped_in_and_out():
    from lmops.tasks.averaging import WeightAverage, ema_decay

    assert ema_decay(0.5, 1000) == pytest.approx(1 - 1 / 500) and ema_decay(0.5, 1) == 0.0
    w = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([w], decay=0.9)
    expected, seen = torch.zeros(3), []
    for t in range(100):
        with torch.no_grad():
            w.add_(1.0)  # a "step": the trained weight is t + 1
        d = min(0.9, t / (t + 1))
        seen.append(d)
        expected = d * expected + (1 - d) * w.detach()
        avg.update()
    assert seen[:3] == [0.0, 0.5, pytest.approx(2 / 3)] and seen[9] == 0.9 and seen[-1] == 0.9  # a running mean, then the decay
    assert torch.allclose(avg.shadow[0], expected)
    # the first 10 steps (1 / (1 - 0.9)) are their plain mean: the starting weights (0) count for nothing
    mean = WeightAverage([torch.nn.Parameter(torch.zeros(1))], decay=0.9)
    for t in range(10):
        with torch.no_grad():
            mean.params[0].fill_(t + 1.0)
        mean.update()
    assert mean.shadow[0].item() == pytest.approx(5.5)
    with pytest.raises(RuntimeError):
        with avg.applied():
            assert torch.allclose(w.detach(), expected)
            raise RuntimeError("scoring failed")
    assert torch.equal(w.detach(), torch.full((3,), 100.0))  # the trained weights are back, however the block ended
    with pytest.raises(ValueError):
        WeightAverage([w], decay=1.0)


def _val_loss(model_dir, data, fp) -> float:
    """The validation loss of a saved model, with the class-weighted loss fine-tuning scores it with."""
    import numpy as np
    import pandas as pd

    train, val = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "validation.parquet")
    counts = np.bincount(SEQ.targets(train, LABELS), minlength=3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(len(train) / (3 * np.maximum(counts, 1)), dtype=torch.float))
    logits = predict_logits(*load_classifier(model_dir, LABELS, SEQ), val["text"].tolist(), SEQ, LABELS, fp.max_length, 128)
    return SEQ.validation_score(logits, SEQ.targets(val, LABELS), LABELS, loss_fn)["val_loss"]


@pytest.mark.parametrize("method, choose", [("full", "better"), ("lora", "averaged")])
def test_ema_averaging_scores_both_weights_and_saves_the_one_it_chose(method, choose, tiny_lm, ingested, tmp_path):
    """Every epoch scores the trained and the averaged weights; the saved model is the chosen epoch's chosen weights
    (recomputed, its validation loss is the one the history records for them), and the curves reach MLflow's series.
    (The tiny model's macro-F1 ties too often for "better" to pick the average on its own; "averaged" always does.)"""
    from lmops.tasks.registry import training_curves

    _, pre, p = tiny_lm
    data = ingested[0]
    fp = p.finetune.model_copy(update={"method": method, "epochs": 3, "patience": 5, "lr": 2e-2 if method == "lora" else 2e-3, "calibration": "none",
                                       "averaging": p.finetune.averaging.model_copy(update={"method": "ema", "horizon_epochs": 0.5, "choose": choose})})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "ft", progress=False)
    assert len(s.history) == 3
    chosen = s.history[s.best_epoch - 1]
    if choose == "better":
        scores = [(h["val_macro_f1"], h["averaged"]["val_macro_f1"]) for h in s.history]
        assert s.best_epoch == 1 + max(range(3), key=lambda e: max(scores[e]))
        assert s.best_weights == ("averaged" if scores[s.best_epoch - 1][1] > scores[s.best_epoch - 1][0] else "trained")
    else:
        assert s.best_weights == "averaged" and s.best_epoch == 1 + max(range(3), key=lambda e: s.history[e]["averaged"]["val_macro_f1"])
    expected = chosen["averaged"]["val_loss"] if s.best_weights == "averaged" else chosen["val_loss"]
    assert _val_loss(s.model_dir, data, fp) == pytest.approx(expected, abs=2e-4)
    assert abs(chosen["val_loss"] - chosen["averaged"]["val_loss"]) > 1e-3  # so the check above tells them apart
    curves = training_curves([], s.history)
    assert [v for _, v in curves["finetune/averaged.val_loss"]] == [h["averaged"]["val_loss"] for h in s.history]


def test_layer_wise_learning_rates_cover_every_parameter_once_and_step_down_by_the_decay(tiny_lm):
    from lmops.errors import UserError
    from lmops.tasks.finetune import layer_groups

    _, pre, _ = tiny_lm
    model, _ = load_classifier(pre.model_dir, LABELS, SEQ, train=True)
    groups = layer_groups(model, 1e-3, 0.5)
    assert sorted(id(q) for g in groups for q in g["params"]) == sorted(id(q) for q in model.parameters() if q.requires_grad)
    lrs = [g["lr"] for g in groups]  # embeddings, each encoder layer, then the head at finetune.lr
    assert len(groups) == model.config.num_hidden_layers + 2 and lrs[-1] == 1e-3
    assert all(hi / lo == pytest.approx(2.0) for lo, hi in zip(lrs, lrs[1:]))
    assert [g.keys() for g in layer_groups(model, 1e-3, 1.0)] == [{"params"}]
    with pytest.raises(UserError, match="finetune.layer_lr_decay"):
        layer_groups(torch.nn.Linear(2, 2), 1e-3, 0.5)


def test_label_smoothing_trains_a_less_confident_model_and_selects_on_plain_targets(tiny_lm, ingested, tmp_path):
    import pandas as pd

    _, pre, p = tiny_lm
    data = ingested[0]
    # 24 rows fitted for 25 epochs: the plain run learns them by heart, the smoothed one cannot be sure of any
    train = pd.read_parquet(data / "train.parquet").groupby("label").head(8)
    train.to_parquet(tmp_path / "train.parquet")
    runs = {}
    for share in (0.0, 0.6):
        fp = p.finetune.model_copy(update={"label_smoothing": share, "calibration": "none", "class_weighting": False, "epochs": 25, "patience": 25,
                                          "batch_size": 8})
        s = finetune(tmp_path / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / str(share), progress=False)
        logits = predict_logits(*load_classifier(s.model_dir, LABELS, SEQ), train["text"].tolist(), SEQ, LABELS, fp.max_length, 64)
        runs[share] = (s, torch.softmax(logits.float(), -1).max(-1).values.mean().item())
    (_, plain_conf), (smooth, smooth_conf) = runs[0.0], runs[0.6]
    # smoothing 0.6 over 3 labels: a target of 0.6 on the label, 0.2 on each other; its optimum is that confidence
    assert plain_conf > 0.8 and smooth_conf < 0.7, (plain_conf, smooth_conf)
    # the validation loss it reports (and early stopping reads) is the plain cross-entropy, not the smoothed objective
    val = pd.read_parquet(data / "validation.parquet")
    logits = predict_logits(*load_classifier(smooth.model_dir, LABELS, SEQ), val["text"].tolist(), SEQ, LABELS, fp.max_length, 64)
    y = torch.tensor([LABELS.index(v) for v in val["label"]])
    best = next(h for h in smooth.history if h["epoch"] == smooth.best_epoch)
    assert best["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), y).item(), abs=2e-3)


def test_rdrop_term_is_the_symmetric_kl_over_the_scored_rows():
    from lmops.tasks.finetune import symmetric_kl

    a = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [9.0, -9.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [1.5, 0.5, -0.5], [-9.0, 9.0, 0.0]])
    target = torch.tensor([0, 2, -100])  # the third row is not scored (a sub-token, padding)
    pa, pb = torch.softmax(a[:2].double(), -1), torch.softmax(b[:2].double(), -1)
    by_row = ((pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)) / 2
    assert symmetric_kl(a, b, target).item() == pytest.approx(by_row.mean().item(), rel=1e-5)
    assert symmetric_kl(a, b, target).item() == pytest.approx(symmetric_kl(b, a, target).item(), rel=1e-6)
    assert symmetric_kl(a, a, target).item() == 0.0
    assert symmetric_kl(a, b, torch.full((3,), -100)).item() == 0.0


def test_rdrop_term_of_a_tagger_counts_each_word_once(tiny_lm):
    from lmops.models import load_tokenizer
    from lmops.tasks.finetune import symmetric_kl

    token = KINDS["token"]
    tok = load_tokenizer(tiny_lm[1].model_dir)
    words = [["infosys", "shares", "skyrocketed"], ["up"]]
    enc = token.encode(tok, words, 32)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(*enc["input_ids"].shape, 9, generator=g) for _ in range(2))
    rows_a, target = token.scored(a, enc, [[1, 2, 0], [0]])
    rows_b, _ = token.scored(b, enc, [[1, 2, 0], [0]])
    # the first sub-token of each of the 4 words, wherever the tokenizer split them
    firsts = [(i, enc.word_ids(i).index(w)) for i, ws in enumerate(words) for w in range(len(ws))]
    assert int((target != -100).sum()) == 4 and enc["input_ids"].shape[1] > 6
    by_word = [symmetric_kl(a[i, j][None], b[i, j][None], torch.zeros(1, dtype=torch.long)) for i, j in firsts]
    assert symmetric_kl(rows_a, rows_b, target).item() == pytest.approx(torch.stack(by_word).mean().item(), rel=1e-5)


def test_rdrop_steps_on_two_dropout_draws_and_needs_dropout(tiny_lm, ingested, tmp_path):
    import pandas as pd

    from lmops.errors import UserError
    from lmops.models import load_tokenizer
    from lmops.tasks.finetune import symmetric_kl, training_loss

    _, pre, p = tiny_lm
    data = ingested[0]
    texts = pd.read_parquet(data / "train.parquet")["text"].tolist()[:16]
    targets = [0, 1, 2, 1] * 4
    model = initial_model(pre.model_dir, LABELS, SEQ, 0)[0].train()
    enc = SEQ.encode(load_tokenizer(pre.model_dir), texts, 32)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 0.5, 2.0]))
    torch.manual_seed(3)
    loss, fit, agreement = training_loss(model, enc, SEQ, ce, targets, 4.0)
    torch.manual_seed(3)  # the same two dropout draws, by hand
    a, b = model(**enc).logits, model(**enc).logits
    y = torch.tensor(targets)
    assert not torch.allclose(a, b)  # two draws do differ
    assert fit.item() == pytest.approx(((ce(a, y) + ce(b, y)) / 2).item(), rel=1e-6)
    assert agreement.item() == pytest.approx(symmetric_kl(a, b, y).item(), rel=1e-6) and agreement.item() > 0
    assert loss.item() == pytest.approx(fit.item() + 4.0 * agreement.item(), rel=1e-6)
    torch.manual_seed(3)  # off: one pass, the plain loss
    plain, plain_fit, none = training_loss(model, enc, SEQ, ce, targets, 0.0)
    assert none is None and plain is plain_fit and plain.item() == pytest.approx(ce(a, y).item(), rel=1e-6)
    # in a fine-tuning: the term per epoch in the history, the loss curve still the cross-entropy
    fp = p.finetune.model_copy(update={"method": "full", "rdrop": 4.0, "epochs": 2, "patience": 2, "calibration": "none"})
    s = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, fp, 0, tmp_path / "rdrop", progress=False)
    assert all(0 < h["train_dropout_kl"] < 0.1 and 0.5 < h["train_loss"] < 1.5 for h in s.history)
    # a base with every dropout probability at 0 would pay twice the compute for nothing
    still = tmp_path / "no_dropout"
    shutil.copytree(pre.model_dir, still)
    config = json.loads((still / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (still / "config.json").write_text(json.dumps(config))
    fp = p.finetune.model_copy(update={"method": "full", "rdrop": 1.0, "epochs": 1, "calibration": "none"})
    with pytest.raises(UserError, match="finetune.rdrop: 1.0 .* has no dropout"):
        finetune(data / "train.parquet", data / "validation.parquet", str(still), LABELS, fp, 0, tmp_path / "refused", progress=False)
