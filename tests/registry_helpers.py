"""Helpers importable from a child process (no conftest side effects such as a new LMOPS_HOME)."""

from pathlib import Path

from lmops.tasks import registry


def fake_version(tmp_path: Path, promote: bool, expected, name="m"):
    """Log a minimal model folder and register it, as the pipeline's register step does."""
    d = tmp_path / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    run_id, source = registry.log_candidate("exp", "r", {"finetune": {"lr": 0.1}}, {"macro_f1": 0.5}, {}, {"model": d})
    return registry.register_version(name, run_id, source, {"data_version": "x.dir"}, promote, expected)


def race_child(me: str, other: str, unguarded: str, name: str) -> None:
    """One side of a forced registry race (run in a child process; prints whether it was promoted).

    A file barrier makes both sides read the champion together (waiting at most 3 s, since a lock can keep
    the other side out), and each pauses between that read and moving the alias, so without a guard both
    read 'no champion' before either moves it. ``unguarded``: "lock" takes the registry lock away, "lease"
    only the Prefect server's lease, "mutex" only the lock in the shared MLflow registry, "" nothing."""
    import contextlib
    import time

    me_dir, other_dir = Path(me), Path(other)
    me_dir.mkdir(parents=True)
    read = registry.get_version

    def slow_read(model, ref=None):
        if ref == registry.CHAMPION:
            (me_dir / "at-read").touch()
            deadline = time.time() + 3
            while not (other_dir / "at-read").exists() and time.time() < deadline:
                time.sleep(0.01)
        v = read(model, ref)
        if ref == registry.CHAMPION:
            time.sleep(1.0)  # the window between compare and set, made wide
        return v

    registry.get_version = slow_read
    if unguarded == "lock":
        registry.registry_lock = lambda *a, **k: contextlib.nullcontext()
    elif unguarded in ("lease", "mutex"):
        from lmops.tasks import locks

        setattr(locks, "shared_lease" if unguarded == "lease" else "registry_mutex", lambda *a, **k: contextlib.nullcontext())
    try:
        print(fake_version(me_dir / "w", True, None, name=name).promoted)
    except Exception as exc:
        # without the guard both sides move the alias at the same instant, and the registry's database may reject
        # the second write of the same alias row: the race happened, it just surfaced as a conflict
        if unguarded and "registered_model_aliases" in str(exc) and ("UNIQUE" in str(exc) or "IntegrityError" in str(exc)):
            print("collided")
        else:
            raise


def raced(outcome: list[str]) -> bool:
    """Both sides got past the champion check: both promoted, or one promoted while the other's alias write collided."""
    return outcome in (["True", "True"], ["True", "collided"])


def start_race(dirs: list[Path], unguarded: str, name: str, envs: list[dict] | None = None) -> list[str]:
    """Both sides of :func:`race_child`; returns their sorted "True"/"False" outputs."""
    import os
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {repo!r}); from tests.registry_helpers import race_child; race_child(*sys.argv[1:])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(dirs[i]), str(dirs[1 - i]), unguarded, name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **((envs or [{}, {}])[i])})
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return sorted(o[0].strip().splitlines()[-1] for o in outs)
