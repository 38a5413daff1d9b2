import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmops.config import PretrainParams, TokenizeParams
from lmops.tasks.lm import mask_tokens
from lmops.tasks.pretrain import lr_at, pretrain
from lmops.models import load_tokenizer
from lmops.tasks.tokenize import pack_blocks, tokenize_corpus, train_tokenizer

TEXTS = ["The Federal Reserve raised interest rates.", "Shares of Infosys fell sharply today."] * 50


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_roundtrip(kind, tmp_path):
    tok = train_tokenizer(TEXTS, TokenizeParams(kind=kind, vocab_size=300))
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    ids = again("interest rates fell", add_special_tokens=False)["input_ids"]
    assert again.decode(ids).strip() == "interest rates fell"
    assert again.pad_token_id is not None and again.mask_token_id is not None


def test_pack_blocks_mlm_frames_each_block():
    tok = train_tokenizer(TEXTS, TokenizeParams(vocab_size=300))
    blocks, n = pack_blocks(tok, TEXTS, 16, add_cls=True)
    assert blocks.shape[1] == 16 and blocks.dtype == np.int32
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()
    assert blocks.shape[0] == n // 14  # no padding: every block is full of real tokens


def test_mask_tokens_80_10_10_and_specials_untouched():
    tok = train_tokenizer(TEXTS, TokenizeParams(vocab_size=300))
    ids = torch.randint(5, len(tok), (200, 64))
    ids[:, 0] = tok.cls_token_id
    inputs, labels = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any()  # [CLS] is never a target
    rate = chosen[:, 1:].float().mean().item()
    assert 0.13 < rate < 0.17
    masked = (inputs == tok.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    assert 0.77 < masked.sum() / chosen.sum() < 0.83
    assert 0.07 < kept.sum() / chosen.sum() < 0.14  # 10% kept + random draws that hit the same id
    assert torch.equal(labels[chosen], ids[chosen])


def test_lr_schedule_warmup_then_decay():
    p = PretrainParams(lr=1.0, warmup_steps=10, max_steps=110)
    assert lr_at(0, p) == pytest.approx(0.1) and lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(60, p) < 1.0 and lr_at(110, p) == pytest.approx(0.1)


def test_tiny_mlm_learns_and_is_seeded(tiny_lm, tmp_path):
    tok, pre, p = tiny_lm
    first, last = pre.history[0]["loss"], pre.history[-1]["loss"]
    assert last < first  # it learns
    assert pre.steps == p.pretrain.max_steps and pre.tokens == p.pretrain.max_steps * p.pretrain.batch_size * 32
    # Same seed, same data → the same losses (torchtune-style pinned run, within a tolerance).
    again = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain, p.project.seed, tmp_path, progress=False)
    torch.testing.assert_close(torch.tensor([h["loss"] for h in again.history]), torch.tensor([h["loss"] for h in pre.history]), rtol=0, atol=1e-3)
    assert again.eval_loss == pytest.approx(pre.eval_loss, abs=1e-3)
    # the output is a loadable Hugging Face folder with safetensors
    model_dir = Path(pre.model_dir)
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 2
    assert Path(pre.loss_plot).stat().st_size > 1000


def test_tiny_clm_with_bpe(ingested, tmp_path):
    data, _, p = ingested
    tp = p.tokenize.model_copy(update={"kind": "bpe"})
    tok = tokenize_corpus(data / "corpus.parquet", tp, "clm", None, tmp_path / "tok")
    pp = p.pretrain.model_copy(update={"objective": "clm", "max_steps": 6})
    s = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), pp, 0, tmp_path / "pre", progress=False)
    assert s.objective == "clm" and np.isfinite(s.perplexity) and s.perplexity > 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(s.model_dir)
    assert model.config.model_type == "gpt2"


def test_tokenizer_training_is_deterministic_across_processes(ingested):
    """Same corpus → same vocabulary in a new process (tokenizers#1794 made WordPiece vary), both kinds."""
    import subprocess
    import sys

    data = ingested[0]
    code = (
        "import sys, json, hashlib, pandas as pd; from lmops.config import TokenizeParams; from lmops.tasks.tokenize import train_tokenizer;"
        f"texts = pd.read_parquet({str(data / 'corpus.parquet')!r})['text'].tolist();"
        "print(*[hashlib.md5(json.dumps(sorted(train_tokenizer(texts, TokenizeParams(kind=k, vocab_size=600)).get_vocab().items())).encode())"
        ".hexdigest() for k in ('wordpiece', 'bpe')])"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1] for _ in range(3)}
    assert len(digests) == 1 and len(next(iter(digests)).split()) == 2


def test_datasets_map_tokenization_streams_caches_and_matches_in_memory_packing(ingested, tmp_path):
    import numpy as np
    import pandas as pd

    from lmops.models import load_tokenizer
    from lmops.tasks.tokenize import pack_blocks, tokenize_corpus

    data, _, p = ingested
    corpus = data / "corpus.parquet"
    cache = tmp_path / "cache"
    small = p.tokenize.model_copy(update={"map_batch_size": 7})  # many small batches: blocks cross batch edges
    a = tokenize_corpus(corpus, small, "mlm", None, tmp_path / "a", cache_root=cache)
    assert not a.cached and not a.ids_cached and a.packing and a.padding_fraction == 0
    tok = load_tokenizer(a.tokenizer_dir)
    expected, n_tokens = pack_blocks(tok, pd.read_parquet(corpus)["text"].tolist(), p.tokenize.block_size, True)
    np.testing.assert_array_equal(np.load(a.blocks_path), expected)
    assert a.tokens == n_tokens
    # same inputs, another run folder: served from the cache, nothing re-tokenized
    b = tokenize_corpus(corpus, p.tokenize, "mlm", None, tmp_path / "b", cache_root=cache)
    assert b.cached and b.cache_key == a.cache_key and b.blocks_path.startswith(str(tmp_path / "b"))
    np.testing.assert_array_equal(np.load(b.blocks_path), expected)
    # a new block size re-packs from the cached token ids
    c = tokenize_corpus(corpus, p.tokenize.model_copy(update={"block_size": 48}), "mlm", None, tmp_path / "c", cache_root=cache)
    assert not c.cached and c.ids_cached and np.load(c.blocks_path).shape[1] == 48


def test_tokenization_in_two_processes_gives_the_same_blocks_and_cache_key(ingested, tmp_path):
    import numpy as np

    from lmops.tasks.tokenize import tokenize_corpus

    data, _, p = ingested
    one = tokenize_corpus(data / "corpus.parquet", p.tokenize.model_copy(update={"map_batch_size": 7}), "mlm", None, tmp_path / "one",
                          cache_root=tmp_path / "c1")
    two_params = p.tokenize.model_copy(update={"map_batch_size": 7, "num_proc": 2})
    two = tokenize_corpus(data / "corpus.parquet", two_params, "mlm", None, tmp_path / "two", cache_root=tmp_path / "c2")
    assert two.cache_key == one.cache_key and not two.ids_cached
    np.testing.assert_array_equal(np.load(two.blocks_path), np.load(one.blocks_path))
    assert len(list((tmp_path / "c2").glob("ids-*_of_00002.arrow"))) == 2
    # the two processes' token ids serve a re-pack
    again = tokenize_corpus(data / "corpus.parquet", two_params.model_copy(update={"block_size": 48}), "mlm", None, tmp_path / "again",
                            cache_root=tmp_path / "c2")
    assert again.ids_cached and np.load(again.blocks_path).shape[1] == 48


def test_tokenize_cache_is_bounded_least_recently_used_first(ingested, tmp_path):
    import os

    from lmops.tasks.tokenize import _cache_entries, prune_cache, tokenize_corpus

    data, _, p = ingested
    corpus, cache = data / "corpus.parquet", tmp_path / "cache"
    runs = {}
    for i, size in enumerate((32, 48, 40)):  # three results that share one ids file and one Arrow copy
        runs[size] = tokenize_corpus(corpus, p.tokenize.model_copy(update={"block_size": size}), "mlm", None, tmp_path / str(size), cache_root=cache)
        for e in _cache_entries(cache):  # spread the "last used" clock so the order is unambiguous
            os.utime(e, (e.stat().st_mtime - 100 * (3 - i),) * 2)
    assert all((cache / r.cache_key).exists() for r in runs.values())
    # reusing the 32-token result makes it the most recently used
    tokenize_corpus(corpus, p.tokenize.model_copy(update={"block_size": 32}), "mlm", None, tmp_path / "again", cache_root=cache)
    entries = _cache_entries(cache)
    results = [e for e in entries if e.name in {r.cache_key for r in runs.values()}]
    one_result = max(sum(f.stat().st_size for f in e.rglob("*") if f.is_file()) for e in results)
    total = sum(sum(f.stat().st_size for f in e.rglob("*") if f.is_file()) if e.is_dir() else e.stat().st_size for e in entries)
    # a budget one result short: exactly the least recently used result goes (48, not the re-used 32)
    removed = prune_cache(cache, (total - one_result / 2) / 1e9)
    assert [e.name for e in removed] == [runs[48].cache_key]
    # a zero budget empties the cache except what the current run uses
    removed = prune_cache(cache, 0.0, keep=[cache / runs[40].cache_key])
    assert (cache / runs[40].cache_key).exists() and not (cache / runs[32].cache_key).exists()
    assert not list(cache.glob("ids-*.arrow"))
    # an evicted entry is simply tokenized again
    again = tokenize_corpus(corpus, p.tokenize.model_copy(update={"block_size": 48}), "mlm", None, tmp_path / "48b", cache_root=cache)
    assert not again.cached and not again.ids_cached and again.blocks == runs[48].blocks


def test_line_by_line_mode_pads_and_pretraining_masks_the_padding(ingested, tmp_path):
    import numpy as np

    from lmops.tasks.pretrain import pretrain
    from lmops.models import load_tokenizer
    from lmops.tasks.tokenize import tokenize_corpus

    data, _, p = ingested
    tp = p.tokenize.model_copy(update={"packing": False})
    t = tokenize_corpus(data / "corpus.parquet", tp, "mlm", None, tmp_path / "tok", cache_root=tmp_path / "cache")
    blocks = np.load(t.blocks_path)
    tok = load_tokenizer(t.tokenizer_dir)
    assert not t.packing and t.blocks == t.documents and 0 < t.padding_fraction < 1
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks == tok.pad_token_id).any()
    s = pretrain(Path(t.blocks_path), Path(t.tokenizer_dir), p.pretrain.model_copy(update={"max_steps": 4}), 0, tmp_path / "pre", progress=False)
    assert s.steps == 4 and np.isfinite(s.eval_loss)


def test_pipeline_checkpoints_are_keyed_so_a_rerun_resumes(tiny_lm, tmp_path, lmops_home):
    """The flow keeps checkpoints under $LMOPS_HOME/checkpoints/<data+params key>: a re-run after a kill
    (here: checkpoints left by an unfinished run) continues from the newest one."""
    from lmops.tasks.checkpoints import resume_dir, resume_key
    from lmops.tasks.pretrain import pretrain

    tok, _, p = tiny_lm
    params = p.pretrain.model_copy(update={"max_steps": 8, "checkpoint_every": 3})
    ckpt = resume_dir(resume_key("data-key", params, 0))
    assert ckpt == resume_dir(resume_key("data-key", params, 0)) != resume_dir(resume_key("other-data", params, 0))
    assert resume_dir(resume_key("data-key", params.model_copy(update={"lr": 1e-4}), 0)) != ckpt
    assert resume_dir(resume_key("data-key", params, 1)) != ckpt
    first = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), params, 0, tmp_path / "run1", progress=False, checkpoint_dir=ckpt)
    assert first.resumed_from_step is None and sorted(x.name for x in ckpt.glob("step-*")) == ["step-00000003", "step-00000006"]
    again = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), params, 0, tmp_path / "run2", progress=False, checkpoint_dir=ckpt)
    assert again.resumed_from_step == 6 and again.steps == 8
    assert again.param_digest == first.param_digest  # resuming is exact: same weights as the uninterrupted run
