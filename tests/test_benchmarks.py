"""Every benchmark runs after the README's main install (`pip install -e .`, no test extra), issue 20: each one's
--help in a process where the test-only packages (pytest, optuna) cannot be imported."""
import copy
import os
import subprocess
import sys

import torch

from conftest import ROOT
from project.checkpoints.files import state_difference

TEST_ONLY = ("pytest", "optuna")  # setup.cfg's test extra (hydra-optuna-sweeper, sqlalchemy, alembic come with optuna)


def test_every_benchmark_shows_its_help_without_the_test_packages(tmp_path):
    for name in TEST_ONLY:  # shadows the installed package: importing it fails as if it were not installed
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is not installed (test extra only)')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    blocked = subprocess.run([sys.executable, "-c", "import pytest"], env=env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "not installed (test extra only)" in blocked.stderr, blocked.stderr
    benchmarks = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(benchmarks) >= 6, benchmarks
    for script in benchmarks:
        proc = subprocess.run([sys.executable, str(script), "--help"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: "), f"{script.name}:\n{proc.stderr[-2000:]}"


def test_the_chaos_benchmarks_comparison_finds_any_difference():
    """benchmarks/chaos.py's bit-for-bit verdict (project.checkpoints.files.state_difference, no pytest needed)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()

    def state():
        return copy.deepcopy({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                              "epoch": 1})

    a, b = state(), state()
    assert state_difference(a, b) is None
    b["optimizer_state_dict"]["state"][0]["exp_avg"][0, 0] += 1e-7  # one Adam moment, one element, a hair
    assert state_difference(a, b) == "optimizer_state_dict['state'][0]['exp_avg'] differs"
    b = state()
    b["model_state_dict"]["bias"] = b["model_state_dict"]["bias"].double()  # equal values, another dtype
    assert state_difference(a, b) == "model_state_dict['bias'] differs"
    b = state()
    b["rng"] = {}
    assert state_difference(a, b) == "rng only in one checkpoint"
    b = state()
    b["epoch"] = 2
    assert state_difference(a, b) == "epoch: 1 != 2"
