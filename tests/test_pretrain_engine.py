"""Pretraining engine: whole-word masking, kill -9 + resume, 2-process DDP on CPU (gloo)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmops.config import TokenizeParams
from lmops.tasks.lm import continuation_table, mask_tokens
from lmops.tasks.tokenize import train_tokenizer
from tests.conftest import REPO

_RNG = np.random.default_rng(0)
_WORDS = ["".join(_RNG.choice(list("abcdefghij"), 7)) for _ in range(400)]
# 400 distinct random words cannot all fit a 140-token vocabulary, so many split into pieces.
TEXTS = [" ".join(_RNG.choice(_WORDS, 12)) for _ in range(300)]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_whole_word_masking_masks_words_as_units(kind):
    tok = train_tokenizer(TEXTS, TokenizeParams(kind=kind, vocab_size=140, lowercase=True))
    enc = tok([" ".join(TEXTS[:2])] * 64, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(enc)
    cont = continuation_table(tok)
    assert cont[ids].any(), "the tiny vocab should split some words into several pieces"
    inputs, labels = mask_tokens(ids, tok, 0.3, torch.Generator().manual_seed(0), cont)
    chosen = labels != -100
    # a continuation piece is chosen exactly when the piece before it is
    follows = cont[ids][:, 1:]
    assert torch.equal(chosen[:, 1:][follows], chosen[:, :-1][follows])
    assert 0.15 < chosen.float().mean() < 0.5


def _write_project(root: Path, **pretrain) -> None:
    from tests.conftest import tiny_params_dict

    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(pretrain={"max_steps": 16, "checkpoint_every": 4, "log_every": 2, **pretrain})))


# distributed = single process, up to float summation order (losses are ~6-8 nats)
TIGHT = 2e-4


def _pretrain_cmd(*extra):
    # cache.enabled=false: these tests are about checkpoints, not about reusing a finished run's result
    return [sys.executable, "-m", "lmops.cli", "pretrain", "--json", *extra, "cache.enabled=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(env, summary) of a clean 16-step `lmops pretrain` run: the reference interrupted runs must match."""
    root = tmp_path_factory.mktemp("clean")
    env = {**os.environ, "LMOPS_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    _write_project(root)
    ref = subprocess.run(_pretrain_cmd("--out", "out"), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return env, json.loads(ref.stdout.splitlines()[-1])


def _interrupt_after_first_checkpoint(root: Path, env: dict, sig: int) -> subprocess.Popen:
    proc = subprocess.Popen(_pretrain_cmd("--out", "out", "pretrain.time_budget_s=null"), cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpts = root / "out" / "pretrain" / "checkpoints"
    deadline = time.time() + 240
    # poll often: the signal must land while steps 5-16 still run (a fraction of a second on a fast machine)
    while time.time() < deadline and not list(ckpts.glob("step-0000000[48]")) and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    proc.wait()
    return proc


def _assert_same_run(s: dict, ref: dict) -> None:
    assert s["steps"] == 16 and s["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-4)
    assert [h["loss"] for h in s["history"]] == pytest.approx([h["loss"] for h in ref["history"]], abs=1e-4)


def test_a_run_resumed_from_a_checkpoint_ends_where_the_uninterrupted_one_does(tiny_lm, tmp_path):
    """The default run's resume check, in process: a run that finds only the step-8 checkpoint continues from it
    (data order, RNG, optimizer, schedule) to the uninterrupted run's losses. The slow tier kills real `lmops
    pretrain` processes (SIGKILL, SIGTERM, another machine) and resumes them through the CLI."""
    import shutil

    from lmops.tasks.pretrain import pretrain

    tok, _, p = tiny_lm
    params = p.pretrain.model_copy(update={"max_steps": 16, "checkpoint_every": 4, "keep_checkpoints": 10, "log_every": 2})
    args = (Path(tok.blocks_path), Path(tok.tokenizer_dir), params, p.project.seed)
    ref = pretrain(*args, tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000008", tmp_path / "b" / "checkpoints" / "step-00000008")
    again = pretrain(*args, tmp_path / "b", progress=False)
    assert ref.resumed_from_step is None and again.resumed_from_step == 8 and again.steps == 16
    assert again.eval_loss == pytest.approx(ref.eval_loss, abs=1e-4)
    assert [h["loss"] for h in again.history] == pytest.approx([h["loss"] for h in ref.history], abs=1e-4)


@pytest.mark.slow  # the default run keeps the in-process resume check above
def test_killed_run_resumes_from_last_checkpoint_with_the_same_result(tmp_path, uninterrupted):
    """SIGKILL mid-run, then the same command: resumes, same data order, same final loss as a clean run."""
    env, ref = uninterrupted
    _write_project(tmp_path)
    _interrupt_after_first_checkpoint(tmp_path, env, signal.SIGKILL)
    assert list((tmp_path / "out" / "pretrain" / "checkpoints").glob("step-*")), "no checkpoint was written before the kill"
    again = subprocess.run(_pretrain_cmd("--out", "out", "pretrain.time_budget_s=null"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    s = json.loads(again.stdout.splitlines()[-1])
    assert s["resumed_from_step"] in (4, 8, 12)
    _assert_same_run(s, ref)


@pytest.mark.slow  # the default run keeps the mirror's own test below and the kill-and-resume test above
def test_a_run_killed_on_one_machine_resumes_on_another_from_the_mirrored_checkpoint(tmp_path, uninterrupted, s3_server):
    """cache.checkpoint_url: a worker that shares no disk with the killed one (another LMOPS_HOME, another run
    folder) pulls the newest complete checkpoint from the object store and ends with the uninterrupted run's
    result; the mirror is emptied once pretraining finishes."""
    import boto3

    env, ref = uninterrupted
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ckpt")
    mirror = ["cache.checkpoint_url=s3://ckpt/team", "pretrain.time_budget_s=null"]
    machines = [tmp_path / "a", tmp_path / "b"]
    for m in machines:
        m.mkdir()
        _write_project(m)
    env_a, env_b = ({**env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}, "LMOPS_HOME": str(m / "home")} for m in machines)
    proc = subprocess.Popen(_pretrain_cmd("--out", "out", *mirror), cwd=machines[0], env=env_a, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    listing = lambda: [o["Key"] for o in s3.list_objects_v2(Bucket="ckpt", Prefix="team/").get("Contents", [])]  # noqa: E731
    while time.time() < deadline and not [k for k in listing() if k.endswith("/state.json")] and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [k for k in listing() if k.endswith("/state.json")], "no checkpoint reached the store before the kill"
    again = subprocess.run(_pretrain_cmd("--out", "elsewhere", *mirror), cwd=machines[1], env=env_b, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    s = json.loads(again.stdout.splitlines()[-1])
    assert s["resumed_from_step"] in (4, 8, 12), again.stdout[-2000:]
    _assert_same_run(s, ref)
    assert listing() == []  # finished: nothing left to resume


def test_the_checkpoint_mirror_keeps_the_newest_complete_steps(tmp_path, s3_server):
    """Upload order (state.json last) and pruning: a step cut short by a kill is never pulled, and the store
    keeps what the disk keeps."""
    import boto3

    from lmops.tasks.checkpoints import CheckpointMirror, latest_checkpoint

    boto3.client("s3").create_bucket(Bucket="ckpt")
    m = CheckpointMirror("s3://ckpt/x", "k")
    for step in (4, 8, 12):
        d = tmp_path / "a" / f"step-{step:08d}"
        (d / "shards").mkdir(parents=True)
        (d / "model.safetensors").write_bytes(bytes([step]) * 100)
        (d / "shards" / "0.distcp").write_bytes(b"s")
        (d / "state.json").write_text(json.dumps({"step": step}))
        m.push(d, keep=2)
    assert m.complete() == ["step-00000008", "step-00000012"]
    m.s3.put_object(Bucket="ckpt", Key=f"{m.prefix}step-00000016/model.safetensors", Body=b"cut short")  # no state.json
    pulled = m.pull(tmp_path / "b")
    assert pulled == tmp_path / "b" / "step-00000012" == latest_checkpoint(tmp_path / "b")
    assert (pulled / "model.safetensors").read_bytes() == bytes([12]) * 100 and (pulled / "shards" / "0.distcp").read_bytes() == b"s"
    assert m.pull(tmp_path / "b") is None  # the disk is as new as the store
    m.clear()
    assert m.complete() == [] and m._objects() == {}


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_then_resumes_to_the_same_result(tmp_path, uninterrupted):
    """SIGTERM (an eviction or preemption) checkpoints the step it arrives at, exits as a transient error
    naming that step, and the same command resumes from exactly there. (Slow tier; the default run keeps
    SIGKILL → resume = uninterrupted, and the stop logic's agreement check in-process.)"""
    env, ref = uninterrupted
    _write_project(tmp_path)
    proc = _interrupt_after_first_checkpoint(tmp_path, env, signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.returncode == 4, err[-2000:]  # TransientError: a flow may retry, a scheduler may reschedule
    m = re.search(r"stopped by SIGTERM at step (\d+) of 16: saved checkpoint step \1", err)
    assert m, err[-2000:]
    stopped = int(m.group(1))
    assert (tmp_path / "out" / "pretrain" / "checkpoints" / f"step-{stopped:08d}" / "state.json").exists()
    again = subprocess.run(_pretrain_cmd("--out", "out", "pretrain.time_budget_s=null"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    s = json.loads(again.stdout.splitlines()[-1])
    assert s["resumed_from_step"] == stopped
    _assert_same_run(s, ref)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The one-process reference the DDP and FSDP runs must match: 8 steps at batch 8, dropout off (the runs then
    differ only by float summation order, so a tight tolerance catches a rank that trains on the wrong slice of
    the batch or masks differently). Checkpointing and pretrain.distributed do not change a one-process run."""
    root = tmp_path_factory.mktemp("single")
    env = {**os.environ, "LMOPS_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    _write_project(root, max_steps=8, checkpoint_every=0, batch_size=8, dropout=0.0)
    single = subprocess.run(_pretrain_cmd("--out", "single"), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    return json.loads(single.stdout.splitlines()[-1])


def test_two_process_ddp_on_cpu_matches_single_process(tmp_path, lmops_home, single_process):
    """torchrun --nproc_per_node 2 with gloo: both ranks end identical, with the single-process losses."""
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "proj"
    root.mkdir()
    _write_project(root, max_steps=8, checkpoint_every=0, batch_size=8, dropout=0.0)
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lmops.cli", "pretrain", "--json", "--out", "ddp"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s1 = single_process
    lines = [json.loads(l) for l in ddp.stdout.splitlines() if l.startswith("{")]
    assert {l["world_size"] for l in lines} == {2} and len(lines) == 2
    assert lines[0]["param_digest"] == lines[1]["param_digest"]  # both ranks hold identical weights
    assert lines[0]["eval_loss"] == pytest.approx(s1["eval_loss"], abs=TIGHT)
    assert [h["loss"] for h in lines[0]["history"]] == pytest.approx([h["loss"] for h in s1["history"]], abs=TIGHT)


@pytest.mark.slow
def test_accelerate_launch_matches_torchrun_and_ranks_stop_together(tmp_path, lmops_home):
    """`accelerate launch` runs the same command to torchrun's exact weights; a time budget and a SIGTERM stop
    both ranks at the same step."""
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "proj"
    root.mkdir()
    _write_project(root, max_steps=8, checkpoint_every=0, batch_size=8)
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lmops.cli", "pretrain", "--json", "--out", "ddp"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    lines = [json.loads(l) for l in ddp.stdout.splitlines() if l.startswith("{")]
    # accelerate's multi-process launcher is torchrun's, with the same RANK/WORLD_SIZE/LOCAL_RANK; on a CPU
    # host the engine picks gloo
    acc = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                          "-m", "lmops.cli", "pretrain", "--json", "--out", "acc"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert acc.returncode == 0, acc.stderr[-3000:]
    acc_lines = [json.loads(l) for l in acc.stdout.splitlines() if l.startswith("{")]
    assert [l["world_size"] for l in acc_lines] == [2, 2]
    assert {l["param_digest"] for l in acc_lines} == {lines[0]["param_digest"]}
    # a time budget stops every rank at the same step (the first log step after it runs out), never one
    # rank early while the other waits in a collective
    budget = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lmops.cli", "pretrain", "--json", "--out", "budget",
                             "pretrain.time_budget_s=0.000001", "pretrain.log_every=3"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert [json.loads(l)["steps"] for l in budget.stdout.splitlines() if l.startswith("{")] == [3, 3]
    # SIGTERM to the whole torchrun group: the ranks agree on one step, checkpoint it, exit as transient;
    # the same command resumes there and ends with the weights of an uninterrupted run
    longer = ["pretrain.max_steps=120", "pretrain.checkpoint_every=40", "pretrain.log_every=2"]
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lmops.cli", "pretrain", "--json", "--out", "term", *longer]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpts = root / "term" / "pretrain" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts / "step-00000040").exists() and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stopped = sorted(int(m) for m in re.findall(r"stopped by SIGTERM at step (\d+) of 120", err))
    assert len(stopped) == 2 and stopped[0] == stopped[1] and stopped[0] % 2 == 0, err[-3000:]  # both ranks, one log step
    again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [json.loads(l) for l in again.stdout.splitlines() if l.startswith("{")]
    assert [r["resumed_from_step"] for r in resumed] == [stopped[0]] * 2
    clean = subprocess.run([*cmd[:-4], "clean", *longer], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert {json.loads(l)["param_digest"] for l in clean.stdout.splitlines() if l.startswith("{")} == {resumed[0]["param_digest"]}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_sparse_mlm_head_gives_the_models_own_loss_and_gradients(arch):
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    from lmops.tasks.lm import sparse_mlm, sparse_targets

    torch.manual_seed(0)
    kw = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = (BertForMaskedLM(BertConfig(**kw)) if arch == "bert" else RobertaForMaskedLM(RobertaConfig(**kw, pad_token_id=1)))
    ids = torch.randint(5, 120, (4, 16))
    labels = torch.where(torch.rand(4, 16) < 0.2, ids, torch.full_like(ids, -100))
    full = model(input_ids=ids, labels=labels).loss
    full.backward()
    g_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    positions, targets = sparse_targets(labels, multiple=16)
    assert len(positions) % 16 == 0 and (targets != -100).sum() == (labels != -100).sum()
    sparse = sparse_mlm(model)(input_ids=ids, mlm_positions=positions, mlm_targets=targets).loss
    sparse.backward()
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n in g_full:
            torch.testing.assert_close(p.grad, g_full[n], rtol=1e-4, atol=1e-6, msg=n)


def test_fast_training_graphs_compile_without_graph_breaks():
    """The sparse MLM head takes host-computed positions: no data-dependent shape, so torch.compile captures
    encoder + head + loss as one graph (a boolean index broke it in three, with a device sync per step)."""
    from transformers import BertConfig, BertForMaskedLM

    from lmops.tasks.lm import sparse_mlm, sparse_targets

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(5, 120, (4, 16))
    positions, targets = sparse_targets(torch.where(torch.rand(4, 16) < 0.2, ids, torch.full_like(ids, -100)))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(sparse_mlm(model))(input_ids=ids, mlm_positions=positions, mlm_targets=targets)
    assert explained.graph_break_count == 0, [str(b.reason)[:300] for b in explained.break_reasons]
    assert explained.graph_count == 1
    # GPT-2 as the engine builds it: one graph through the loss (HF's unnamed-loss warning used to split it)
    from lmops.config import PretrainParams
    from lmops.tasks.lm_model import build_model

    tok = type("Tok", (), {"__len__": lambda self: 120, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})()
    gpt = build_model(PretrainParams(objective="clm", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 16)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(gpt)(input_ids=ids, labels=ids)
    assert explained.graph_break_count == 0, [str(b.reason)[:300] for b in explained.break_reasons]


def test_dropout_override_and_forced_attention_kernel(tiny_lm, tmp_path):
    from transformers import AutoConfig

    from lmops.config import PretrainParams
    from lmops.tasks.lm_model import build_model, set_dropout

    bert = set_dropout(AutoConfig.for_model("bert"), 0.0)
    assert bert.hidden_dropout_prob == 0.0 and bert.attention_probs_dropout_prob == 0.0
    gpt = set_dropout(AutoConfig.for_model("gpt2"), 0.05)
    assert (gpt.resid_pdrop, gpt.embd_pdrop, gpt.attn_pdrop) == (0.05, 0.05, 0.05)
    tok, pre, p = tiny_lm
    from lmops.models import load_tokenizer

    tokenizer = load_tokenizer(tok.tokenizer_dir)
    assert build_model(PretrainParams(dropout=0.0), tokenizer, 32).config.hidden_dropout_prob == 0.0
    # continuing from a checkpoint takes the override too
    cont = build_model(PretrainParams(base_model=pre.model_dir, dropout=0.2), tokenizer, 32)
    assert cont.config.attention_probs_dropout_prob == 0.2
    # a forced SDPA kernel (math runs everywhere) trains the same model as PyTorch's own choice, dropout off
    from lmops.tasks.pretrain import pretrain

    runs = [pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir),
                     p.pretrain.model_copy(update={"max_steps": 5, "dropout": 0.0, "sdpa_backend": b, "profile_steps": 2, "log_every": 2,
                                                   "peak_flops": 1e12}), 0, tmp_path / b, progress=False) for b in ("auto", "math")]
    assert runs[0].eval_loss == pytest.approx(runs[1].eval_loss, abs=1e-3)
    # each log step has its own interval rate and, with a known peak, MFU = FLOPs/token × rate ÷ peak
    assert [h["step"] for h in runs[0].history] == [2, 4, 5]
    for h in runs[0].history:
        assert h["tokens_per_s"] > 0 and h["mfu"] == pytest.approx(runs[0].flops_per_token * h["tokens_per_s"] / 1e12, rel=1e-3, abs=1e-4)
    # profile_steps: a kernel table and a trace of the profiled steps; the math kernel shows up where it was forced
    table = (tmp_path / "math" / "profile.txt").read_text()
    assert "aten::" in table and "ProfilerStep" in table
    # PyTorch's own choice on CPU is the fused flash kernel; forced math attention runs as batched matmuls
    # instead (its wrapper op is too thin to reach the table)
    auto = (tmp_path / "auto" / "profile.txt").read_text()
    assert "aten::_scaled_dot_product_flash_attention" in auto and "aten::bmm" not in auto
    assert "aten::_scaled_dot_product_flash_attention" not in table and "aten::bmm" in table, table
    assert (tmp_path / "auto" / "trace.json").stat().st_size > 1000
    from lmops.errors import UserError

    with pytest.raises(UserError, match="pretrain.sdpa_backend cudnn has no kernel"):
        pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain.model_copy(update={"max_steps": 2, "sdpa_backend": "cudnn"}),
                 0, tmp_path / "cudnn", progress=False)


def test_periodic_held_out_evaluation_leaves_training_unchanged(tiny_lm, tmp_path):
    from lmops.config import PretrainParams
    from lmops.tasks.pretrain import pretrain

    tok, _, p = tiny_lm
    base = p.pretrain.model_copy(update={"max_steps": 6, "log_every": 2, "checkpoint_every": 0})
    plain = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), base, 0, tmp_path / "plain", progress=False)
    watched = pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), base.model_copy(update={"eval_every": 2}), 0, tmp_path / "watched", progress=False)
    assert [h["loss"] for h in watched.history] == [h["loss"] for h in plain.history]  # evaluation draws from its own RNG
    assert watched.eval_loss == plain.eval_loss
    assert [h["step"] for h in watched.history if "eval_loss" in h] == [2, 4]  # the end's evaluation is the summary's
    assert all(0 < h["eval_loss"] < 20 for h in watched.history if "eval_loss" in h)
    with pytest.raises(ValueError, match=r"eval_every \(3\) must be a multiple of pretrain.log_every \(2\)"):
        PretrainParams(eval_every=3, log_every=2)


def test_flops_per_token_of_gpt2_small_and_bert_base_match_the_usual_counts():
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from lmops.tasks.lm_model import flops_per_token

    with torch.device("meta"):
        gpt = GPT2LMHeadModel(GPT2Config())
        bert = BertForMaskedLM(BertConfig())
    # GPT-2 124M: N without position embeddings = 123.65M (nanoGPT's count); 6N + 12·L·H·T
    assert flops_per_token(gpt, 1024) == pytest.approx(6 * 123.65e6 + 12 * 12 * 768 * 1024, rel=2e-3)
    dense, sparse = flops_per_token(bert, 128), flops_per_token(bert, 128, head_fraction=0.15)
    # the vocabulary head is 30522×768 (+ a 768×768 transform): 85% of it is skipped by the sparse head
    assert dense - sparse == pytest.approx(6 * 0.85 * (30522 * 768 + 768 * 768 + 2 * 768 + 30522), rel=1e-3)


def _fsdp_run(root: Path, env: dict):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "lmops.cli", "pretrain", "--json", "--out", "fsdp"]
    run = subprocess.run(torchrun, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return torchrun, [json.loads(l) for l in run.stdout.splitlines() if l.startswith("{")]


def _fsdp_project(tmp_path: Path, lmops_home: Path) -> tuple[Path, dict]:
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "proj"
    root.mkdir()
    _write_project(root, max_steps=8, checkpoint_every=4, batch_size=8, distributed="fsdp", keep_checkpoints=1, dropout=0.0)
    return root, env


def test_two_process_fsdp_on_cpu_matches_single_process(tmp_path, lmops_home, single_process):
    """FSDP2 (fully_shard per block) over 2 gloo processes: the losses of one process, a plain HF model saved,
    and sharded checkpoints (each rank writes its own shards, no full copy)."""
    root, env = _fsdp_project(tmp_path, lmops_home)
    _, lines = _fsdp_run(root, env)
    s1 = single_process
    assert {l["world_size"] for l in lines} == {2} and lines[0]["param_digest"] == lines[1]["param_digest"]
    assert [h["loss"] for h in lines[0]["history"]] == pytest.approx([h["loss"] for h in s1["history"]], abs=TIGHT)
    assert lines[0]["eval_loss"] == pytest.approx(s1["eval_loss"], abs=TIGHT)
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(root / "fsdp" / "pretrain" / "model")  # a plain, loadable HF folder
    ckpts = root / "fsdp" / "pretrain" / "checkpoints"
    ckpt = ckpts / "step-00000004"
    assert (ckpt / "state.json").exists() and (ckpt / "shards" / ".metadata").exists()
    assert len(list((ckpt / "shards").glob("*.distcp"))) == 2  # one file of shards per rank, no full copy
    assert not list(ckpts.glob(".tmp-*"))


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_resume_to_the_same_weights(tmp_path, lmops_home):
    """Re-running the FSDP command resumes from the sharded step-4 checkpoint and ends with the very same
    weights; a run without FSDP refuses that checkpoint and names the setting that wrote it. (Slow tier; the
    default run keeps resumed = uninterrupted for one process, and FSDP = one process.)"""
    root, env = _fsdp_project(tmp_path, lmops_home)
    torchrun, lines = _fsdp_run(root, env)
    again = subprocess.run(torchrun, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [json.loads(l) for l in again.stdout.splitlines() if l.startswith("{")]
    assert {l["resumed_from_step"] for l in resumed} == {4} and resumed[0]["steps"] == 8
    assert resumed[0]["param_digest"] == lines[0]["param_digest"]
    plain = subprocess.run(_pretrain_cmd("--out", "fsdp"), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "pretrain.distributed: fsdp" in plain.stderr, plain.stderr[-2000:]


def test_gpu_mfu_script_runs_its_variants_on_cpu(tmp_path):
    """The prepared GPU benchmark only meets a GPU now and then: keep it runnable (tiny sizes, no compile)."""
    out = tmp_path / "mfu.json"
    r = subprocess.run([sys.executable, "benchmarks/gpu_mfu.py", "--tiny", "--steps", "3", "--variants", "base,lean", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    runs = [x for x in rows if "variant" in x]
    assert [(x["name"], x["variant"]) for x in runs] == [("bert-tiny-mlm", "base"), ("bert-tiny-mlm", "lean"), ("gpt-tiny-clm", "base"), ("gpt-tiny-clm", "lean")]
    assert all("error" not in x and x["steps"] == 3 for x in runs), runs
    assert all(x["over_base"] > 0 for x in runs if x["variant"] == "lean")
    assert runs[1]["params"]["dropout"] == 0.0 and runs[1]["flops_per_token"] < runs[0]["flops_per_token"]  # sparse head


def test_sigterm_in_process_checkpoints_the_step_it_arrives_at(tiny_lm, tmp_path):
    """The default run's check of the SIGTERM path (the slow tier runs it through the CLI and resumes):
    the step in flight finishes, is checkpointed, and pretraining stops as a transient error naming it."""
    import threading

    from lmops.tasks.pretrain import Preempted, pretrain

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    tok, _, p = tiny_lm
    params = p.pretrain.model_copy(update={"max_steps": 100_000, "checkpoint_every": 3, "log_every": 1})
    ckpts = tmp_path / "run" / "checkpoints"
    training = threading.Event()
    training.set()

    def terminate_after_first_checkpoint():
        while training.is_set() and not list(ckpts.glob("step-*")):
            time.sleep(0.005)
        if training.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_first_checkpoint, daemon=True).start()
    try:
        with pytest.raises(Preempted, match=r"stopped by SIGTERM at step (\d+) of 100000: saved checkpoint step \1") as err:
            pretrain(Path(tok.blocks_path), Path(tok.tokenizer_dir), params, 0, tmp_path / "run", progress=False)
    finally:
        training.clear()
    stopped = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert stopped >= 3 and (ckpts / f"step-{stopped:08d}" / "state.json").exists() and err.value.exit_code == 4


def test_a_base_without_a_head_starts_from_the_corpus_token_prior(tiny_lm, tmp_path):
    """An encoder-only checkpoint (as sentence-transformers ship all-MiniLM): its fresh MLM head's bias is the log
    unigram prior of the training tokens, so the first loss is the prior's, below the random head's; a checkpoint
    with its own head keeps it."""
    import numpy as np
    from transformers import AutoModelForMaskedLM

    from lmops.models import load_tokenizer
    from lmops.tasks.lm_model import build_model
    from lmops.tasks.pretrain import pretrain

    tok, pre, p = tiny_lm
    tokenizer = load_tokenizer(tok.tokenizer_dir)
    headless = tmp_path / "encoder-only"
    AutoModelForMaskedLM.from_pretrained(pre.model_dir).bert.save_pretrained(headless)
    tokenizer.save_pretrained(headless)
    counts = np.arange(len(tokenizer)) % 7
    prior = np.log((counts + 0.5) / (counts + 0.5).sum())
    fresh = build_model(p.pretrain.model_copy(update={"base_model": str(headless)}), tokenizer, 32, lambda v: counts[:v])
    assert np.allclose(fresh.get_output_embeddings().bias.detach().numpy(), prior, atol=1e-5)
    plain = build_model(p.pretrain.model_copy(update={"base_model": str(headless), "head_init": "random"}), tokenizer, 32, lambda v: counts[:v])
    assert not np.allclose(plain.get_output_embeddings().bias.detach().numpy(), prior, atol=1e-2)
    kept = build_model(p.pretrain.model_copy(update={"base_model": pre.model_dir}), tokenizer, 32, lambda v: counts[:v])
    own = AutoModelForMaskedLM.from_pretrained(pre.model_dir).get_output_embeddings().bias.detach().numpy()
    assert np.allclose(kept.get_output_embeddings().bias.detach().numpy(), own)

    def first_loss(head_init: str) -> float:
        params = p.pretrain.model_copy(update={"base_model": str(headless), "head_init": head_init, "max_steps": 1, "log_every": 1,
                                               "warmup_steps": 0, "checkpoint_every": 0})
        return pretrain(Path(tok.blocks_path), headless, params, 0, tmp_path / head_init, progress=False).history[0]["loss"]

    random_loss, prior_loss = first_loss("random"), first_loss("prior")
    assert prior_loss < random_loss - 0.3 and prior_loss < np.log(len(tokenizer)), (prior_loss, random_loss)
