"""The paired bootstrap before (sklearn f1_score per draw, inlined here) and now (lmops.metrics.bootstrap_diff_runs).

Run: .venv/bin/python benchmarks/bootstrap_speed.py"""
import time, numpy as np
from sklearn.metrics import f1_score
from lmops.metrics import bootstrap_diff_runs
rng = np.random.default_rng(0)
n = 1421; y = rng.integers(0, 3, n); a = np.where(rng.random(n) < .85, y, (y+1) % 3); b = np.where(rng.random(n) < .86, y, (y+2) % 3)
def old(refs, runs_a, runs_b, k, n=1000, seed=0):
    y = np.asarray(refs); A, B = (np.asarray(r).reshape(len(r), len(y)) for r in (runs_a, runs_b)); ids = list(range(k))
    def arm(runs, pick, idx):
        return (float(np.mean([(runs[r][idx] == y[idx]).mean() for r in pick])), float(np.mean([f1_score(y[idx], runs[r][idx], labels=ids, average="macro", zero_division=0) for r in pick])))
    rng = np.random.default_rng(seed)
    return np.array([[x - z for x, z in zip(arm(B, [0], i), arm(A, [0], i))] for i in (rng.integers(0, len(y), len(y)) for _ in range(n))])
for name, f in (("sklearn per draw (before)", lambda: old(y.tolist(), [a.tolist()], [b.tolist()], 3)), ("one bincount per draw (now)", lambda: bootstrap_diff_runs(y.tolist(), [a.tolist()], [b.tolist()], ["n", "p", "x"]))):
    t = time.perf_counter(); f(); print(f"{name}: {time.perf_counter() - t:.2f} s")
