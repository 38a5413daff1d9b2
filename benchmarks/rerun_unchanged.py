"""A run with nothing changed vs a full run, and a fine-tuning-only change, on the default params (issue 11).

Run: .venv/bin/python benchmarks/rerun_unchanged.py   (an otherwise idle machine; ~8 minutes on 2 cores)

Each timing is the wall time of the `lmops run` command a user types (process start to exit), in a fresh
clone of this repository and a fresh LMOPS_HOME:

A. embedded Prefect API (no server; `make run`): 1) a full run, 2) the same command again (nothing changed),
   3) `finetune.lr` changed (ingest, tokenization and pretraining reused, fine-tuning and the rest run).
B. the local control plane (`lmops server start`, how scheduled runs happen), in another fresh home:
   4) a full run, 5) the same command again.

Ratio = the nothing-changed run's wall time ÷ the full run's, within A and within B.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LMOPS = str(Path(sys.executable).parent / "lmops")


def lmops(*args: str, cwd: Path, home: Path) -> tuple[float, dict]:
    env = {**os.environ, "LMOPS_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    out = subprocess.run([LMOPS, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"lmops {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return wall, json.loads(lines[-1]) if lines else {}


def row(name: str, wall: float, s: dict) -> dict:
    what = "no change" if s.get("no_change") else f"v{s['model']['version']} registered"
    print(f"{name:55s} {wall:7.1f} s  {what}; reused: {', '.join(s.get('reused', [])) or '-'}", flush=True)
    return {"run": name, "wall_s": round(wall, 2), "no_change": bool(s.get("no_change")), "reused": s.get("reused", []),
            "version": s["model"]["version"]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lmops-rerun-bench-"))
    project = work / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
    rows = []

    home = work / "home-embedded"
    rows.append(row("A1 full run (embedded API)", *lmops("run", "--json", cwd=project, home=home)))
    rows.append(row("A2 same command, nothing changed (embedded API)", *lmops("run", "--json", cwd=project, home=home)))
    rows.append(row("A3 finetune.lr changed (embedded API)", *lmops("run", "--json", "finetune.lr=5e-4", cwd=project, home=home)))

    home = work / "home-server"
    subprocess.run([LMOPS, "server", "start"], cwd=project, env={**os.environ, "LMOPS_HOME": str(home)}, check=True, capture_output=True)
    try:
        rows.append(row("B1 full run (control plane: lmops server start)", *lmops("run", "--json", cwd=project, home=home)))
        rows.append(row("B2 same command, nothing changed (control plane)", *lmops("run", "--json", cwd=project, home=home)))
    finally:
        subprocess.run([LMOPS, "server", "stop"], cwd=project, env={**os.environ, "LMOPS_HOME": str(home)}, capture_output=True)

    walls = {r["run"][:2]: r["wall_s"] for r in rows}
    result = {"rows": rows, "ratio_embedded": round(walls["A2"] / walls["A1"], 4), "ratio_control_plane": round(walls["B2"] / walls["B1"], 4),
              "finetune_change_vs_full": round(walls["A3"] / walls["A1"], 4), "cpu_count": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=2))
    (REPO / "benchmarks" / "results" / "rerun_unchanged.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
