"""Model soups: tiny classifiers of one start averaged into one model (tasks/soup.py), by hand, from the CLI's stage
and in the pipeline through the gate."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from lmops.errors import UserError
from lmops.kinds import KINDS
from lmops.layout import Snapshot
from lmops.tasks import seen
from lmops.tasks.finetune import finetune, initial_model, start_digest
from lmops.tasks.soup import check_members, soup

LABELS = ["negative", "neutral", "positive"]
SEQ = KINDS["sequence"]


@pytest.fixture(scope="module")
def members(tiny_lm, ingested, tmp_path_factory):
    """Three seeds started from one head (init_seed 3), and a fourth run whose head was drawn apart."""
    _, pre, p = tiny_lm
    data = ingested[0]
    out = tmp_path_factory.mktemp("members")
    shared = p.finetune.model_copy(update={"init_seed": 3})
    runs = [finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, shared, seed, out / str(seed), progress=False)
            for seed in (0, 1, 2)]
    apart = finetune(data / "train.parquet", data / "validation.parquet", pre.model_dir, LABELS, p.finetune, 5, out / "apart", progress=False)
    return runs, apart, p, data, pre


def _config(folder) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def test_fine_tuning_records_the_weights_it_started_from(members):
    runs, apart, p, _, pre = members
    starts = {_config(r.model_dir)["lmops_start"] for r in runs}
    assert len(starts) == 1 and _config(apart.model_dir)["lmops_start"] not in starts
    model, _ = initial_model(pre.model_dir, LABELS, SEQ, 0, 3)
    assert start_digest(model) == starts.pop()  # the digest is of the weights as training starts, whatever the seed
    model.classifier.weight.data[0, 0] += 1e-3
    assert start_digest(model) != _config(runs[0].model_dir)["lmops_start"]


def test_a_uniform_soup_is_the_mean_of_its_members_weights(members, tmp_path):
    runs, _, p, data, _ = members
    s = soup([r.model_dir for r in runs], data / "validation.parquet", LABELS, p.finetune, "uniform", tmp_path, progress=False)
    weights = [load_file(str(Path(r.model_dir) / "model.safetensors")) for r in runs]
    averaged = load_file(str(Path(s.model_dir) / "model.safetensors"))
    assert set(averaged) == set(weights[0])
    for k, v in averaged.items():
        if v.is_floating_point():
            assert torch.allclose(v, sum(w[k] for w in weights) / 3, atol=1e-6), k
    # a member's own files are not the soup's: its calibration is fitted on the soup, its seen texts are all of theirs
    assert s.temperature is not None and json.loads((Path(s.model_dir) / "calibration.json").read_text())["temperature"] == pytest.approx(s.temperature)
    union = set().union(*(set(seen.of(r.model_dir).tolist()) for r in runs))
    assert set(seen.of(s.model_dir).tolist()) == union
    conf = _config(s.model_dir)
    assert conf["lmops_soup"] == {"method": "uniform", "members": 3} and conf["lmops_start"] == _config(runs[0].model_dir)["lmops_start"]
    assert s.used == s.members and len(s.member_val) == 3 and s.start == conf["lmops_start"]
    assert (tmp_path / "scores.png").stat().st_size > 0 and json.loads((tmp_path / "soup.json").read_text())["val_select"] == s.val_select
    # the soup's recorded validation score is what the saved folder scores
    from lmops.metrics import macro_f1
    from lmops.tasks.calibration import Identity
    from lmops.tasks.predict import load_classifier, predict_logits

    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    model.lmops_calibrator = Identity()
    val = pd.read_parquet(data / "validation.parquet")
    pred = predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, p.finetune.max_length, 64).argmax(-1).tolist()
    assert macro_f1(SEQ.targets(val, LABELS), pred, 3) == pytest.approx(s.val_macro_f1, abs=1e-4)


def test_a_soup_is_scored_on_validation_as_fine_tuning_chose_its_epochs(members, tmp_path):
    """With several sources in validation and finetune.select_on: source_mean, members and soup are compared on the
    mean of the per-source scores, as early stopping compared epochs (the pooled score would let one source's
    larger share decide)."""
    from lmops.metrics import macro_f1
    from lmops.tasks.calibration import Identity
    from lmops.tasks.predict import load_classifier, predict_logits

    runs, _, p, data, _ = members
    val = pd.read_parquet(data / "validation.parquet")
    val["source"] = ["a" if i % 4 else "b" for i in range(len(val))]  # 3 : 1
    val.to_parquet(tmp_path / "val.parquet", index=False)
    by_mean = p.finetune.model_copy(update={"select_on": "source_mean"})
    s = soup([r.model_dir for r in runs], tmp_path / "val.parquet", LABELS, by_mean, "uniform", tmp_path / "mean", progress=False)
    pooled = soup([r.model_dir for r in runs], tmp_path / "val.parquet", LABELS, p.finetune.model_copy(update={"select_on": "pooled"}),
                  "uniform", tmp_path / "pooled", progress=False)
    model, tok = load_classifier(s.model_dir, LABELS, SEQ)
    model.lmops_calibrator = Identity()
    pred = predict_logits(model, tok, val["text"].tolist(), SEQ, LABELS, p.finetune.max_length, 64).argmax(-1)
    y = SEQ.targets(val, LABELS)
    per_source = [macro_f1([y[i] for i in idx], pred[idx].tolist(), 3) for idx in
                  (np.flatnonzero(val["source"] == name) for name in ("a", "b"))]
    assert s.val_select == pytest.approx(sum(per_source) / 2, abs=1e-4) and pooled.val_select == pytest.approx(s.val_macro_f1, abs=1e-4)
    assert s.val_select != pytest.approx(pooled.val_select, abs=1e-4)  # the two criteria differ on these rows


def _ruined(member: str, tmp_path: Path) -> Path:
    """A copy of ``member`` (its config and recorded start kept) whose weights are swamped by noise: a member a soup
    must not take."""
    bad = tmp_path / "ruined"
    shutil.copytree(member, bad)
    gen = torch.Generator().manual_seed(0)
    weights = {k: v + 3.0 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in load_file(str(bad / "model.safetensors")).items()}
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return bad


def test_a_greedy_soup_leaves_out_a_member_that_lowers_its_validation_score(members, tmp_path):
    runs, _, p, data, _ = members
    bad = _ruined(runs[1].model_dir, tmp_path)
    pool = [runs[0].model_dir, str(bad), runs[1].model_dir, runs[2].model_dir]
    g = soup(pool, data / "validation.parquet", LABELS, p.finetune, "greedy", tmp_path / "greedy", progress=False)
    u = soup(pool, data / "validation.parquet", LABELS, p.finetune, "uniform", tmp_path / "uniform", progress=False)
    assert str(bad) not in g.used and g.used[0] == pool[max(range(4), key=lambda i: (g.member_val[i], -i))]
    # the path is the rule: best member first, then each member in order of its own score, kept iff the soup with
    # it scores no lower on validation than the soup without it
    assert [step["member"] for step in g.greedy] == [pool[i] for i in sorted(range(4), key=lambda i: -g.member_val[i])]
    best = g.greedy[0]["select"]
    for step in g.greedy[1:]:
        assert step["kept"] == (step["select"] >= best), g.greedy
        best = max(best, step["select"]) if step["kept"] else best
    assert g.val_select == best and [step["member"] for step in g.greedy if step["kept"]] == g.used
    weights = [load_file(str(Path(m) / "model.safetensors")) for m in g.used]
    saved = load_file(str(Path(g.model_dir) / "model.safetensors"))
    assert all(torch.allclose(v, sum(w[k] for w in weights) / len(weights), atol=1e-6) for k, v in saved.items() if v.is_floating_point())
    assert g.val_select >= max(g.member_val)  # never below its best member on validation, by construction
    assert u.val_select < g.val_select and u.used == pool  # the uniform soup takes the ruined member in, and pays for it


def test_models_that_cannot_be_averaged_are_refused_with_every_reason(members, tmp_path):
    runs, apart, p, data, _ = members
    with pytest.raises(UserError, match=r"started from different weights .*finetune\.init_seed"):
        check_members([Path(runs[0].model_dir), Path(apart.model_dir)])
    longer = tmp_path / "longer"
    shutil.copytree(runs[1].model_dir, longer)
    conf = _config(longer)
    (longer / "config.json").write_text(json.dumps({**conf, "lmops_max_length": 64}))
    with pytest.raises(UserError) as err:
        soup([runs[0].model_dir, runs[0].model_dir, str(longer), str(tmp_path)], data / "validation.parquet", LABELS, p.finetune, "uniform",
             tmp_path / "out", progress=False)
    text = str(err.value)
    assert "is listed more than once" in text and "lmops_max_length (64 vs 32)" in text and "not a fine-tuned model folder" in text
    assert not (tmp_path / "out" / "model").exists()  # refused before anything was written
    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(runs[2].model_dir, unrecorded)
    (unrecorded / "config.json").write_text(json.dumps({k: v for k, v in _config(unrecorded).items() if k != "lmops_start"}))
    start, notes = check_members([Path(runs[0].model_dir), unrecorded])
    assert start == _config(runs[0].model_dir)["lmops_start"] and "1 of the 2 members do not record" in notes[0]


def test_the_soup_stage_scores_the_soup_members_and_ensemble_on_the_same_test_rows(members, tmp_path, lmops_home):
    from sklearn.metrics import f1_score

    from lmops.tasks import stages
    from lmops.tasks.distill import teacher_probs

    runs, _, p, data, _ = members
    dirs = [Path(r.model_dir) for r in runs]
    out = stages.soup(p, dirs, Snapshot(data), tmp_path, names=["A", "B", "C"])
    report = (tmp_path / "report.md").read_text()
    assert "# Soup (uniform) of 3 of 3 members" in report and "| soup |" in report and all(f"| {n} |" in report for n in "ABC")
    test = pd.read_parquet(data / "test.parquet")
    by_hand = teacher_probs([str(d) for d in dirs], test["text"].tolist(), LABELS, p.finetune, 1.0).argmax(-1).tolist()
    expected = f1_score(test["label"], [LABELS[i] for i in by_hand], labels=LABELS, average="macro", zero_division=0)
    assert out["models"]["ensemble of the 3 members"]["macro_f1"] == pytest.approx(expected, abs=1e-6)
    d = out["soup_minus"]["A"]
    assert d["diff"] == pytest.approx(out["soup"]["macro_f1"] - out["models"]["A"]["macro_f1"], abs=5e-5)
    # a member trained on another split would carry this snapshot's test rows into the soup
    other = tmp_path / "other-split"
    shutil.copytree(dirs[1], other)
    seen.record(other, [data / "train.parquet", pd.read_parquet(data / "test.parquet").head(4)])
    with pytest.raises(UserError, match=r"member .*other-split was trained or validated on 4 of the \d+ rows of this snapshot's test split"):
        stages.soup(p, [dirs[0], other], Snapshot(data), tmp_path / "refused")


def test_soup_params_name_the_key_to_fix():
    from lmops.config import params_from_dict
    from lmops.errors import ConfigError
    from tests.conftest import tiny_params_dict

    def error(**soup_and_finetune):
        with pytest.raises((ConfigError, ValueError)) as err:
            params_from_dict(tiny_params_dict(**soup_and_finetune))
        return str(err.value)

    assert "set finetune.init_seed (e.g. finetune.init_seed=7)" in error(soup={"enabled": True, "seeds": [8]})
    assert "lists project.seed 7" in error(soup={"enabled": True, "seeds": [7]}, finetune={"init_seed": 7})
    assert "list soup.seeds" in error(soup={"enabled": True}, finetune={"init_seed": 7})
    assert "repeats a seed" in error(soup={"seeds": [8, 8]})
    ok = params_from_dict(tiny_params_dict(soup={"enabled": True, "seeds": [8]}, finetune={"init_seed": 7}))
    assert ok.soup.seeds == [8] and ok.model_hash() != params_from_dict(tiny_params_dict(finetune={"init_seed": 7})).model_hash()


def test_the_pipeline_registers_the_soup_through_the_gate(prefect_api, project, lmops_home):
    """soup.enabled: the fine-tune stage runs once more per soup seed, and the soup of those models is what the gate
    judges and the registry records, its members in the lineage."""
    from lmops.config import load_params
    from lmops.flows.pipeline import pipeline
    from lmops.tasks import registry

    p = load_params(project / "params.yaml", overrides=["soup.enabled=true", "soup.seeds=[8]", "finetune.init_seed=7", "finetune.epochs=2"])
    out = pipeline(params=p.to_dict(), project_root=str(project))
    run = Path(out["run_dir"])
    assert out["promoted"] and out["finetune"]["method"] == "full+soup"
    info = registry.show("finance-sentiment@champion")
    tags = info["tags"]
    assert tags["finetune_method"] == "full+soup" and tags["finetune_weights"] == "soup of 2"
    lineage = json.loads(tags["soup"])
    assert lineage["members"] == [str(run / "finetune" / "model"), str(run / "finetune-seed-8" / "model")] and lineage["method"] == "uniform"
    local = registry.download_model(info["source"], run / "check")
    assert _config(local)["lmops_soup"] == {"method": "uniform", "members": 2}
    assert (run / "soup" / "scores.png").exists() and (run / "finetune-seed-8" / "finetune.json").exists()
    # what a person sees in the Prefect UI: the members' and the soup's validation scores, with the plot inlined
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        shown = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["soup"])),
                                      flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[out["flow_run_id"]])))
    assert len(shown) == 1 and "| **finetune** |" in shown[0].data and "| **finetune-seed-8** |" in shown[0].data
    assert "| **soup** |" in shown[0].data and "data:image/png;base64," in shown[0].data


def test_the_soup_command_averages_the_members_it_is_given(members, project, lmops_home, monkeypatch, capsys):
    """`lmops soup --member A --member B soup.method=greedy` and `lmops soup --sweep DIR`: the command's path (a fresh
    ingest of the project, which splits as the members' data did), its JSON, and the exit code of a refusal."""
    from lmops.cli import main

    runs, apart, _, _, _ = members
    monkeypatch.chdir(project)
    assert main(["soup", "--member", runs[0].model_dir, "--member", runs[2].model_dir, "soup.method=greedy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["summary"]["method"] == "greedy" and out["summary"]["members"] == [runs[0].model_dir, runs[2].model_dir]
    assert Path(out["report"]).read_text().startswith("# Soup (greedy) of ") and Path(out["summary"]["model_dir"], "model.safetensors").is_file()
    assert main(["soup", "--member", runs[0].model_dir, "--member", apart.model_dir]) == 2
    assert "started from different weights" in capsys.readouterr().err
    # --sweep DIR: the models a sweep's trials saved (a pruned trial saved none), named by trial in the report
    sweep = project / "sweep"
    for n, run in ((0, runs[0]), (2, runs[1])):
        shutil.copytree(run.model_dir, sweep / f"trial-00{n}" / "finetune" / "model")
    (sweep / "trial-001" / "finetune").mkdir(parents=True)
    assert main(["soup", "--sweep", str(sweep), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["summary"]["members"] == [str(sweep / t / "finetune" / "model") for t in ("trial-000", "trial-002")]
    assert "| trial-000 |" in Path(out["report"]).read_text() and "| trial-002 |" in Path(out["report"]).read_text()
    assert main(["soup", "--sweep", str(project)]) == 2 and "no trial saved a model" in capsys.readouterr().err
