"""The README's two commands and the continuation commands users type, verbatim, on a clean checkout."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = readme_commands()
    assert test_cmd.endswith("-m pytest") and "pip install -e '.[test]'" in test_cmd
    assert main_cmd.endswith("run.py") and "pip install -e ." in main_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines


@pytest.mark.slow
def test_default_job_then_continuations_on_a_clean_checkout(tmp_path):
    """`python run.py`, then `python run.py resume=reset_optimizer model.dropout=0.25`, then
    `python run.py resume=full trainer.max_epochs=<more>`, typed as a user would in a fresh clone."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # what the clone holds is main's last commit; copy the working tree over it so uncommitted edits count too
    for rel in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split():
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    main_cmd, _ = readme_commands()
    assert main_cmd.split(" && ")[-1] == ".venv/bin/python run.py"

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb" / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb" / "config"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb" / "data")}  # the default logger is W&B: keep it offline here

    def python(*args):
        proc = subprocess.run([sys.executable, "run.py", *args], cwd=clone, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    python()
    (first,) = (clone / "outputs").glob("*/*/checkpoints/final_model.pth")
    parent = torch.load(first.parent / "best_model.pth")
    assert parent["epoch"] >= 1 and 0.6 <= parent["best_f_score"] <= 1, "the embedded default should show learning"
    rows = (first.parents[1] / "metrics.csv").read_text().splitlines()
    f_scores = [float(r.split(",")[header.index("val_f_score")]) for header in [rows[0].split(",")] for r in rows[1:]]
    assert max(f_scores[-4:]) > f_scores[0] + 0.05, f"val F-score did not clearly rise: {f_scores}"

    out = python("resume=reset_optimizer", "model.dropout=0.25")
    assert str(first.parent / "best_model.pth") in out and "model.dropout" in out
    out = python("resume=full", f"trainer.max_epochs={parent['config']['trainer']['max_epochs'] + 2}")
    finals = sorted((clone / "outputs").glob("*/*/checkpoints/final_model.pth"))
    assert len(finals) == 3
    continued = torch.load(finals[-1])
    assert continued["epoch"] == parent["config"]["trainer"]["max_epochs"] + 2
    # resume=full continued the latest run (the dropout 0.25 one) as it was configured, not with the defaults
    assert continued["config"]["model"]["dropout"] == 0.25 and "model.dropout" not in out
    assert list((clone / "outputs").glob("*/*/wandb/offline-run-*")), "the default logger (W&B, offline) wrote nothing"
