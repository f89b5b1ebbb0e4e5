"""Issue 25, part 8, in process: a warm-up capped below the run's length, progress lines where the stream is not a
terminal, the matching report without an empty dropped-modules clause, inspect's wording and one epoch convention
for a file another script wrote, analyze's picture where it can be written."""
import io
import logging
import math

import numpy as np
import pytest
import torch

from project import progress, resume, schedulers
from project.checkpoints import foreign
from project.commands import analyze, inspect


def cosine_lrs(max_epochs: int, warmup_epochs: int = 1, min_lr_ratio: float = 0.01) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = schedulers.Cosine(optimizer, max_epochs, warmup_epochs, min_lr_ratio)
    lrs = []
    for _ in range(max_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def old_cosine(epoch: int, max_epochs: int, warmup_epochs: int, min_lr_ratio: float) -> float:
    """The closed form before the cap, as it was."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    progress_ = min(1.0, (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))


@pytest.mark.parametrize("max_epochs", [2, 3, 4, 6])
def test_a_short_run_peaks_then_anneals(max_epochs, caplog):
    """A 2-epoch continuation used to ramp up for its whole length and end at its peak (warmup_epochs=1)."""
    with caplog.at_level(logging.INFO, logger="project.schedulers"):
        lrs = cosine_lrs(max_epochs)
    assert lrs[-1] < max(lrs) == 1.0 and lrs.index(1.0) < max_epochs / 2
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert len(capped) == (max_epochs == 2)
    if capped:
        assert "scheduler.warmup_epochs=1 capped at 0 for a run of 2 epochs" in capped[0]


def test_the_default_run_keeps_every_lr_and_a_long_warmup_is_capped(caplog):
    """The default (12 epochs, warm-up 1) unchanged bit for bit; a warm-up of 5 in 6 epochs capped at 2, logged once;
    the LR stays a pure function of the epoch (a rebuilt scheduler at epoch 3 gives the same LR)."""
    assert cosine_lrs(12) == [old_cosine(e, 12, 1, 0.01) for e in range(12)]
    assert schedulers.capped_warmup(1, 12) == 1 and schedulers.capped_warmup(5, 6) == 2
    with caplog.at_level(logging.INFO, logger="project.schedulers"):
        lrs = cosine_lrs(6, warmup_epochs=5)
    assert sum("capped at 2" in r.getMessage() for r in caplog.records) == 1
    assert lrs == [old_cosine(e, 6, 2, 0.01) for e in range(6)]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = schedulers.Cosine(optimizer, 6, 5, 0.01)
    scheduler.load_state_dict({"last_epoch": 3})
    assert optimizer.param_groups[0]["lr"] == lrs[3]


def test_progress_is_plain_lines_where_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    assert list(progress.track(range(100), 100, "predict", "img", stream=stream)) == list(range(100))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 10
    assert lines[0].startswith("predict: 10/100 img (10%), ") and lines[-1].startswith("predict: 100/100 img (100%)")
    small = io.StringIO()
    with progress.bar(3, "predict", "img", stream=small) as shown:
        for _ in range(3):
            shown.update(1)
    assert [line.split(",")[0] for line in small.getvalue().splitlines()] == \
        ["predict: 1/3 img (33%)", "predict: 2/3 img (67%)", "predict: 3/3 img (100%)"]


def test_progress_is_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    list(progress.track(range(5), 5, "predict", "img", stream=stream))
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue()


def test_matching_report_names_dropped_modules_only_when_there_are_some(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    theirs = foreign.normalise(model.state_dict(), "theirs.pth", None, "best_f_score")  # a bare state dict
    with caplog.at_level(logging.INFO, logger="project.resume"):
        resume.load_matching_weights(model, theirs, "theirs.pth", [])
    line = next(r.getMessage() for r in caplog.records if "Parameter matching" in r.getMessage())
    assert "2 matched, 0 missing, 0 unexpected" in line and "dropped" not in line
    caplog.clear()
    ours = {"format": 2, "model_state_dict": {"0.weight": model.state_dict()["0.weight"]}, "dropped_modules": ["0"]}
    with caplog.at_level(logging.INFO, logger="project.resume"):
        resume.load_matching_weights(model, ours, "ours.pth", [])
    line = next(r.getMessage() for r in caplog.records if "Parameter matching" in r.getMessage())
    assert "1 missing (1 expected: modules ['0'] were dropped by the checkpoint's run)" in line


@pytest.fixture
def their_file(tmp_path):
    """Two epochs of their script, which counts from 0: `epoch: 1`, a history of 2, its own `config` dict."""
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "shared" / "best_model.pth"
    path.parent.mkdir()
    history = {"train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "train_f_score": [0.3, 0.4],
               "val_f_score": [0.3, 0.5], "lr": [1e-3, 5e-4]}
    torch.save({"epoch": 1, "model_state_dict": model.state_dict(), "best_f_score": np.float64(0.5),
                "config": {"lr": 1e-3, "epochs": 2}, "history": history}, path)
    return path


def test_inspect_says_whose_config_is_missing_and_whose_epoch_count_it_is(their_file, capsys):
    assert inspect.main([str(their_file)]) == 0
    out = capsys.readouterr().out
    assert "config (dict)" in out and "epoch=1" in out  # the file's keys, as stored
    assert "epoch 1 as stored by the file (its own count; 2 epochs in its history)" in out
    assert ("lacks        optimizer state, a config this framework can use (its `config` is its own script's "
            "settings), RNG state") in out


def test_analyze_puts_a_files_picture_in_the_working_directory(their_file, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert analyze.main([str(their_file)]) == 0
    out = capsys.readouterr().out
    assert "Run " in out and ": 2 epochs" in out and "best epoch    2" in out
    assert ("file's epoch  epoch 1 as stored by the file (its own count; 2 epochs in its history); numbered 1-2 "
            "here") in out
    assert (here / "best_model_analysis.png").is_file() and list(their_file.parent.iterdir()) == [their_file]
    assert "picture       best_model_analysis.png" in out
    assert analyze.main([str(their_file), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").is_file()


def test_analyze_falls_back_to_the_working_directory_for_a_run_dir_it_cannot_write(tmp_path, monkeypatch):
    run_dir = tmp_path / "someone_elses_run"
    run_dir.mkdir()
    assert analyze.picture_path(run_dir, run_dir, None) == (run_dir / "analysis.png", "")
    monkeypatch.setattr(analyze.os, "access", lambda path, mode: False)  # as for a read-only run dir (root can write)
    png, why = analyze.picture_path(run_dir, run_dir, None)
    assert png.name == "someone_elses_run_analysis.png" and not png.is_absolute() and "cannot be written" in why
