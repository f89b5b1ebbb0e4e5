"""Sweeps: Hydra's basic launcher and our local_gpus launcher (fresh process per job, GPU pool, failures)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, load

GRID = ["model.dropout=0.2,0.25", "optimizer.weight_decay=2e-4,3e-4"]


def sweep(sweep_dir, *overrides, cwd, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *TINY, f"hydra.sweep.dir={sweep_dir}",
                           *overrides], cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def jobs(sweep_dir):
    out = {}
    for run in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        final = run / "checkpoints" / "final_model.pth"
        starts = json.loads((run / "environment.json").read_text()) if (run / "environment.json").exists() else []
        out[int(run.name)] = {"dir": run, "final": final if final.exists() else None, "env": starts,
                              "end": final.stat().st_mtime if final.exists() else None}
    return out


def check_grid(sweep_dir):
    runs = jobs(sweep_dir)
    assert sorted(runs) == [0, 1, 2, 3] and all(r["final"] for r in runs.values())
    swept = {(load(r["final"])["config"]["model"]["dropout"], load(r["final"])["config"]["optimizer"]["weight_decay"])
             for r in runs.values()}
    assert swept == {(0.2, 2e-4), (0.2, 3e-4), (0.25, 2e-4), (0.25, 3e-4)}
    return runs


def test_grid_with_the_basic_launcher(tmp_path):
    sweep(tmp_path / "sweep", *GRID, cwd=tmp_path)
    check_grid(tmp_path / "sweep")


def overlap(a, b):
    (s1, e1), (s2, e2) = a, b
    return s1 < e2 and s2 < e1


def interval(run):
    from datetime import datetime
    return datetime.fromisoformat(run["env"][0]["time"]).timestamp(), run["end"]


def test_grid_with_local_gpus_two_at_a_time_on_the_cpu(tmp_path):
    sweep(tmp_path / "sweep", "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2", *GRID, cwd=tmp_path)
    runs = check_grid(tmp_path / "sweep")
    assert all(r["env"][0]["CUDA_VISIBLE_DEVICES"] == "" for r in runs.values())  # CPU jobs see no GPU
    assert len({r["env"][0]["pid"] for r in runs.values()}) == 4  # a fresh process per job
    spans = [interval(r) for r in runs.values()]
    assert any(overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]), "no two jobs ran at once"


def test_gpu_pool_gives_each_running_job_its_own_gpu(tmp_path):
    """gpus=[0,1] on a machine without GPUs: the assignment is still made and recorded (torch then trains on
    the CPU), which is what this test checks."""
    sweep(tmp_path / "sweep", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[0,1]", *GRID, cwd=tmp_path)
    runs = check_grid(tmp_path / "sweep")
    gpu = {i: r["env"][0]["CUDA_VISIBLE_DEVICES"] for i, r in runs.items()}
    assert set(gpu.values()) == {"0", "1"}
    for i in runs:
        for j in runs:
            if i < j and gpu[i] == gpu[j]:
                assert not overlap(interval(runs[i]), interval(runs[j])), f"jobs {i} and {j} shared GPU {gpu[i]}"


def test_a_failing_job_is_reported_and_the_others_complete(tmp_path):
    proc = sweep(tmp_path / "sweep", "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2",
                 "model.dropout=0.2,1.5", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "1 of 2 jobs failed" in proc.stderr and "#1" in proc.stderr and "model.dropout=1.5" in proc.stderr
    runs = jobs(tmp_path / "sweep")
    assert runs[0]["final"] is not None and runs[1]["final"] is None
