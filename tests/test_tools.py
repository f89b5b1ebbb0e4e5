"""inspect, analyze and compare on run directories made by real tiny trainings, and analyze's verdict on a
hand-written metrics.csv whose answers are known."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, load, run_cli, train_tiny
from project.commands import analyze
from project.commands import compare
from project.commands import inspect
from project.loggers import append_rows, read_rows
from project.rundirs.reading import metric_rows

LRS = ["0.0002", "0.0008", "0.003"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three runs that differ only in optimizer.lr (3 epochs each), in one sweep directory."""
    cwd = tmp_path_factory.mktemp("tools")
    run_cli("-m", f"optimizer.lr={','.join(LRS)}", *TINY, "trainer.max_epochs=3", f"hydra.sweep.dir={cwd / 'sweep'}",
            cwd=cwd)
    return cwd / "sweep"


@pytest.fixture(scope="module")
def child(sweep):
    """A resume=reset_optimizer continuation of job 0 with a new dropout."""
    run_dir = sweep.parent / "child"
    train_tiny(run_dir, "resume=reset_optimizer", f"resume.checkpoint={sweep / '0'}", "model.dropout=0.25",
               "trainer.max_epochs=2", cwd=sweep.parent)
    return run_dir


@pytest.fixture(scope="module")
def early_stopped(sweep):
    """min_delta=10 makes every epoch after the first 'no improvement': stops at epoch 2 with patience 1."""
    run_dir = sweep.parent / "early"
    train_tiny(run_dir, "trainer.max_epochs=6", "trainer.early_stopping.patience=1",
               "trainer.early_stopping.min_delta=10", cwd=sweep.parent)
    return run_dir


def best_val(run_dir) -> float:
    return max(float(r["val_f_score"]) for r in read_rows(run_dir / "metrics.csv"))


def table(out: str) -> list[dict]:
    """The markdown table compare prints, as dicts."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def assert_png(path, min_size=(600, 400)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert min_size[0] <= width <= 2000 and min_size[1] <= height <= 2000, (width, height)
    assert path.stat().st_size < 300_000


def tool(name, *args) -> subprocess.CompletedProcess:
    """The tool as a user runs it: a fresh process; stderr with its line breaks undone, for matching."""
    proc = subprocess.run([sys.executable, "-m", f"project.commands.{name}", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    proc.stderr = " ".join(proc.stderr.split())
    return proc


# ---- compare ----

def test_compare_ranks_a_sweep_by_best_val_metric(sweep, capsys):
    assert compare.main([str(sweep)]) == 0
    rows = table(capsys.readouterr().out)
    expected = sorted(["0", "1", "2"], key=lambda job: -best_val(sweep / job))
    assert [r["run"] for r in rows] == expected
    assert [r["best val f_score"] for r in rows] == [f"{best_val(sweep / job):.4f}" for job in expected]
    # the swept value is the only config column, as typed
    assert [k for k in rows[0] if "." in k] == ["optimizer.lr"]
    assert {r["run"]: r["optimizer.lr"] for r in rows} == {"0": "0.0002", "1": "0.0008", "2": "0.003"}
    assert all(r["status"] == "done" and r["epochs"] == "3" for r in rows)
    with open(sweep / "comparison.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == expected
    lines = (sweep / "comparison.md").read_text().splitlines()
    assert [line[:4] for line in lines[:5]] == ["| # ", "|---", "| 1 ", "| 2 ", "| 3 "]
    # is the winner's lead real: the noise rule on the top two (project/noise.py)
    assert lines[5] == "" and lines[6].startswith("Top two: ") and " noise: spread " in lines[6]
    assert_png(sweep / "comparison.png")


def test_compare_shows_a_continuations_parent_best(sweep, child, tmp_path, capsys):
    assert compare.main([str(sweep / "0"), str(child), "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    runs = {r["name"]: r for r in result["runs"]}
    parent_best = load(sweep / "0" / "checkpoints" / "best_model.pth")["best_f_score"]
    assert runs["child"]["parent_best"] == parent_best and runs["sweep/0"]["parent_best"] is None
    assert set(result["swept"]) >= {"model.dropout", "resume.mode"}
    assert runs["child"]["values"]["model.dropout"] == 0.25
    header, *rows = result["table"]
    assert header[-2:] == ["parent best", "vs parent"]
    child_row = next(r for r in rows if r[1] == "child")
    assert child_row[-1] == f"{best_val(child) - parent_best:+.4f}"
    assert_png(tmp_path / "comparison.png")


def test_compare_bad_input_is_one_paragraph_and_exit_2(tmp_path):
    proc = tool("compare", tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = tool("compare", tmp_path / "empty")
    assert proc.returncode == 2 and "has no metrics.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ---- inspect ----

def test_inspect_shows_what_is_inside(sweep, capsys):
    path = sweep / "0" / "checkpoints" / "best_model.pth"
    state = load(path)
    assert inspect.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"epoch        {state['epoch']} of 3, global step {state['global_step']}" in out
    assert f"best         val f_score {state['best_f_score']:.4f} at epoch {state['best_epoch']}" in out
    assert "optimizer: AdamW, state for" in out and "rng: python, numpy, torch" in out
    assert "lineage      none: trained from scratch" in out
    for module in ("encoder", "decoder"):
        values = sum(t.numel() for k, t in state["model_state_dict"].items() if k.startswith(module + "."))
        assert f"{values:,}" in next(line for line in out.splitlines() if line.strip().startswith(module))

    assert inspect.main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["epoch"] == state["epoch"] and info["best_score"] == state["best_f_score"]
    assert sum(m["values"] for m in info["parameters"].values()) == sum(
        t.numel() for t in state["model_state_dict"].values())


def test_inspect_diff_against_a_checkpoint_and_the_current_config(sweep, capsys):
    path = sweep / "0" / "checkpoints" / "best_model.pth"
    assert inspect.main([str(path), "--diff", str(sweep / "2"), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)["diff"]["changes"]
    assert diff == {"optimizer.lr": [0.0002, 0.003]}  # the only difference between the two runs
    assert inspect.main([str(path), "--diff", str(ROOT / "conf" / "config.yaml")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("data.train_size"))
    assert line.split()[1] == "48" and line.split()[2] != "48"  # TINY vs the default composed from conf/


def test_inspect_shows_the_lineage_of_a_continuation(sweep, child, capsys):
    assert inspect.main([str(child / "checkpoints" / "final_model.pth")]) == 0
    out = capsys.readouterr().out
    assert f"1. reset_optimizer from {sweep / '0' / 'checkpoints' / 'best_model.pth'}" in out
    assert "model.dropout 0.1 -> 0.25" in out and "parent best" in out


def test_inspect_bad_file_is_one_paragraph_and_exit_2(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint at all")
    proc = tool("inspect", bad)
    assert proc.returncode == 2 and "truncated or corrupt" in proc.stderr and "Traceback" not in proc.stderr
    proc = tool("inspect", tmp_path / "nothing.pth")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# ---- analyze ----

def test_analyze_a_run_that_early_stopping_ended(early_stopped, capsys):
    final = load(early_stopped / "checkpoints" / "final_model.pth")
    assert final["epoch"] == 2 and final["early_stopping"]["stopped"]
    assert analyze.main([str(early_stopped)]) == 0
    out = capsys.readouterr().out
    assert f"best epoch    {final['best_epoch']}: val f_score {final['best_f_score']:.4f}" in out
    assert "ended         early stopping at epoch 2 of 6" in out
    assert_png(early_stopped / "analysis.png")


def test_analyze_a_run_that_ran_to_the_end(sweep, tmp_path, capsys):
    assert analyze.main([str(sweep / "1"), "--out", str(tmp_path / "curves.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = load(sweep / "1" / "checkpoints" / "final_model.pth")
    assert result["ended"]["ended"] == "max_epochs" and result["best_epoch"] == final["best_epoch"]
    assert result["best"] == final["best_f_score"]
    assert_png(tmp_path / "curves.png")


def test_analyze_a_continuation_against_its_starting_weights(sweep, child, capsys):
    """A reset_optimizer run is judged against its starting weights as scored in its own first row (the same
    data and metric), with the noise rule's verdict; its parent's stored best is no longer the yardstick."""
    assert analyze.main([str(child)]) == 0
    out = capsys.readouterr().out
    parent = load(sweep / "0" / "checkpoints" / "best_model.pth")
    start = load(child / "checkpoints" / "final_model.pth")["start_score"]["score"]
    assert start == parent["best_f_score"]  # the parent's best weights, scored again on the same data
    delta = max(best_val(child), start) - start
    verb = "beats" if delta > 0 else "does not beat"
    assert f"this run {verb} its starting weights' {start:.4f} (scored here, epoch 0): {delta:+.4f} (" in out
    assert " noise: spread " in out and "; last 2: " in out
    assert_png(child / "analysis.png")


def test_analyze_reads_the_curves_a_checkpoint_keeps(tmp_path, capsys, monkeypatch):
    """Their own script kept its curves as `history` in best_model.pth: the same verdict and picture, the picture
    in the working directory (never beside the file: often a shared or read-only place), the file's epoch said
    to be its own count."""
    history = {"train_loss": [1.0, 0.8, 0.6, 0.5, 0.45, 0.4], "val_loss": [1.1, 0.9, 0.8, 0.82, 0.85, 0.9],
               "train_f_score": [0.3, 0.45, 0.55, 0.6, 0.65, 0.7], "val_f_score": [0.3, 0.5, 0.6, 0.59, 0.58, 0.56],
               "lr": [1e-3] * 6}
    path = tmp_path / "their_best_model.pth"
    torch.save({"epoch": 6, "model_state_dict": {"w": torch.zeros(2)}, "history": history}, path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert analyze.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "best epoch    3: val f_score 0.6000 (train 0.5500); last 5: 0.5660 +- 0.0397" in out
    assert "overfitting   from epoch 4" in out
    assert "file's epoch  epoch 6 as stored by the file (its own count; 6 epochs in its history); numbered 1-6" in out
    assert_png(tmp_path / "here" / "their_best_model_analysis.png")
    assert not (tmp_path / "their_best_model_analysis.png").exists()
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, path)
    assert analyze.main([str(path)]) == 2 and "holds no `history`" in " ".join(capsys.readouterr().err.split())


def test_analyze_bad_input_is_one_paragraph_and_exit_2(tmp_path):
    proc = tool("analyze", tmp_path)
    assert proc.returncode == 2 and "has no metrics.csv" in proc.stderr and "Traceback" not in proc.stderr


# Known curves: best 0.45 at 3, no improvement for 4-6 (3 epochs), recovery to 0.48 at 7, best 0.50 at 8, then
# val falls for 4 epochs while train keeps rising: overfitting from epoch 9.
TRAIN = [0.30, 0.40, 0.50, 0.52, 0.55, 0.58, 0.62, 0.66, 0.70, 0.74, 0.78, 0.82]
VAL = [0.28, 0.36, 0.45, 0.44, 0.43, 0.44, 0.48, 0.50, 0.49, 0.47, 0.45, 0.42]


def write_metrics(run_dir, train, val, metric="f_score", phases=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": i + 1, "phase": (phases or ["train"] * len(val))[i], "lr": 1e-3 * 0.9 ** i,
             "train_loss": 1 - t, f"train_{metric}": t, "val_loss": 1 - v, f"val_{metric}": v}
            for i, (t, v) in enumerate(zip(train, val))]
    append_rows(run_dir / "metrics.csv", rows)
    return run_dir


def test_verdict_on_known_curves(tmp_path):
    run_dir = write_metrics(tmp_path / "known", TRAIN, VAL, phases=["warmup"] * 2 + ["train"] * 10)
    v = analyze.analyze(run_dir)
    assert (v["best_epoch"], v["best"]) == (8, 0.50)
    assert v["gap_at_best"] == pytest.approx(0.66 - 0.50) and v["gap_at_end"] == pytest.approx(0.82 - 0.42)
    assert v["overfit_start"]["epoch"] == 9
    assert [(r["epoch"], r["validations_without_improvement"], r["previous_best_epoch"]) for r in v["recoveries"]] == [
        (7, 3, 3)]
    assert v["phase_changes"] == [{"epoch": 3, "phase": "train"}]
    assert v["ended"]["ended"] == "unknown"  # no checkpoint to tell
    assert analyze.analyze(run_dir, streak=4)["recoveries"] == []
    assert_png(run_dir / "analysis.png")


def test_verdict_without_overfitting_and_for_a_loss(tmp_path):
    rising = analyze.analyze(write_metrics(tmp_path / "rising", TRAIN[:8], VAL[:8]))
    assert rising["best_epoch"] == 8 and rising["overfit_start"] is None
    # a dip shorter than the streak that has not recovered yet is not called overfitting
    assert analyze.analyze(write_metrics(tmp_path / "dip", TRAIN[:10], VAL[:10]))["overfit_start"] is None
    # lower is better for a loss monitor (SimMIM's recon_loss): the minimum is the best
    loss = analyze.analyze(write_metrics(tmp_path / "loss", [1 - t for t in TRAIN], [1 - v for v in VAL],
                                         metric="recon_loss"))
    assert loss["monitor"] == "recon_loss" and not loss["higher_is_better"]
    assert loss["best_epoch"] == 8 and loss["overfit_start"]["epoch"] == 9


def test_verdict_with_validation_every_other_epoch(tmp_path):
    """trainer.eval_interval=2 leaves val empty on odd epochs: streaks count evaluations, not epochs."""
    val = [v if i % 2 else "" for i, v in enumerate(VAL)]  # validated at epochs 2, 4, ..., 12
    run_dir = tmp_path / "sparse"
    run_dir.mkdir()
    append_rows(run_dir / "metrics.csv", [{"epoch": i + 1, "phase": "train", "lr": 1e-3, "train_loss": 1 - t,
                                           "train_f_score": t, "val_loss": "" if v == "" else 1 - v,
                                           "val_f_score": v} for i, (t, v) in enumerate(zip(TRAIN, val))])
    v = analyze.analyze(run_dir, streak=1)
    # evaluations 0.36 (2), 0.44 (4), 0.44 (6), 0.50 (8), 0.47 (10), 0.42 (12)
    assert (v["best_epoch"], v["best"]) == (8, 0.50)
    assert [(r["epoch"], r["validations_without_improvement"]) for r in v["recoveries"]] == [(8, 1)]
    assert v["overfit_start"]["epoch"] == 10
    assert_png(run_dir / "analysis.png")


def test_metrics_csv_keeps_a_metric_that_appears_in_a_later_phase(tmp_path):
    """Pretraining logs recon_loss, fine-tuning f_score: the file widens instead of dropping f_score."""
    path = tmp_path / "metrics.csv"
    append_rows(path, [{"epoch": 1, "phase": "pretrain", "val_recon_loss": 0.5}])
    append_rows(path, [{"epoch": 2, "phase": "finetune", "val_loss": 0.9, "val_f_score": 0.3}])
    rows = read_rows(path)
    assert list(rows[0]) == ["epoch", "phase", "val_recon_loss", "val_loss", "val_f_score"]
    assert rows[0]["val_f_score"] == "" and rows[1]["val_f_score"] == "0.3" and rows[1]["val_recon_loss"] == ""
    assert math.isnan(metric_rows(tmp_path)[0]["val_f_score"])


def test_console_scripts_are_prefixed_and_shadow_nothing():
    """`compare` is ImageMagick's; ours are project-inspect, project-analyze, project-compare (setup.cfg)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in parser["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {f"project-{name}": f"project.commands.{name}:main"
                       for name in ("inspect", "analyze", "compare", "preview", "evaluate", "predict", "export", "lineage",
                                    "sweep")}
    for module in ("project.commands.inspect", "project.commands.analyze", "project.commands.compare", "project.commands.preview"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0 and "usage:" in proc.stdout, f"python -m {module}: {proc.stderr}"
    installed = Path(sys.executable).parent / "project-inspect"
    if installed.exists():  # the venv of the README's install command
        proc = subprocess.run([str(installed), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: project-inspect")
