"""Paths no other test ran for real (issue 26, section 5): the plateau scheduler and the Adam and SGD optimizers
resumed bit for bit; trainer.eval_interval=2 with early stopping, best selection and plateau; an early stop at
exactly the uninterrupted run's epoch after a resume; trainer.ema.validate=false; project-analyze --streak;
project-preview --epoch.

Each resume continues a periodic checkpoint of an identical uninterrupted run (checkpoint_epoch_N.pth, as
tests/test_phases.py does): the same state a run stopped at that epoch's end leaves. Runs are kept few and tiny (a
fixture per reference run, several paths per run); the commands are called in-process."""
import csv
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import assert_resumed, assert_same_state, load, ROOT, same_weights, TINY, train_tiny, training_rows
from project.commands import analyze, preview
from project.data import fake_faces
from project.data.loader import batch_order


def rows(run_dir):
    return training_rows(run_dir)


def resume_from(ckpt, run_dir, *overrides, cwd):
    """`resume=full` from `ckpt` with the reference's overrides: (the run's stdout, its final_model.pth)."""
    proc = train_tiny(run_dir, *overrides, "resume=full", f"resume.checkpoint={ckpt}", cwd=cwd)
    return proc.stdout, load(run_dir / "checkpoints" / "final_model.pth")


# --- plateau (stepped every epoch) with SGD ----------------------------------------------------------------------

# threshold=1.0: only a doubled score counts as better for the plateau, so the LR falls within 4 tiny epochs
# (epoch 1 sets its best, 2 is its first bad epoch, 3 its second: the LR halves for epoch 4)
PLATEAU_SGD = ["scheduler=plateau", "scheduler.patience=1", "+scheduler.threshold=1.0", "optimizer=sgd",
               "trainer.max_epochs=4"]


@pytest.fixture(scope="module")
def plateau_sgd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("plateau_sgd")
    train_tiny(cwd / "ref", *PLATEAU_SGD, "trainer.save_interval=1", "trainer.keep_last=10", cwd=cwd)
    return cwd / "ref"


def test_plateau_and_sgd_resume_bit_for_bit(plateau_sgd, tmp_path):
    """Resumed after epoch 2, where the plateau holds its best and one bad epoch: a restore that lost either would
    not halve the LR for epoch 4 and end with other weights."""
    ckpt = plateau_sgd / "checkpoints" / "checkpoint_epoch_2.pth"
    stopped = load(ckpt)
    plateau = stopped["scheduler_state_dict"]  # its best is epoch 1's score (a fresh one holds -inf)
    assert plateau["num_bad_epochs"] == 1 and plateau["best"] == float(rows(plateau_sgd)[0]["val_f_score"])
    assert all("momentum_buffer" in s for s in stopped["optimizer_state_dict"]["state"].values())  # SGD's state
    ref_lrs = [float(r["lr"]) for r in rows(plateau_sgd)]
    assert ref_lrs == [0.05, 0.05, 0.05, 0.025], ref_lrs  # the plateau acted within the run

    out, got = resume_from(ckpt, tmp_path / "resumed", *PLATEAU_SGD, cwd=tmp_path)
    assert_resumed(out, ckpt, stopped["global_step"], got)
    assert_same_state(got, load(plateau_sgd / "checkpoints" / "final_model.pth"))
    assert [float(r["lr"]) for r in rows(tmp_path / "resumed")] == ref_lrs


# --- eval_interval=2: early stopping, best selection, plateau; Adam; an early stop after a resume --------------------

# Validated at epochs 2, 4, 6. min_delta=1.0: only the first validation improves for early stopping, so with
# patience 2 the run stops after the validation at 6 (of 8). Counting the unvalidated epochs would stop it at 4.
# best_model.pth follows the real scores (no min_delta), which rise here: 2, 4, 6 are bests.
SPARSE = ["trainer.eval_interval=2", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=1.0",
          "scheduler=plateau", "scheduler.patience=0", "+scheduler.threshold=1.0", "optimizer=adam",
          "trainer.max_epochs=8"]


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sparse")
    train_tiny(cwd / "ref", *SPARSE, "trainer.save_interval=1", "trainer.keep_last=10", cwd=cwd)
    return cwd / "ref"


def test_eval_interval_counts_only_validated_epochs(sparse):
    """Epochs without a score do not count for patience, never pick best_model.pth, never step the plateau."""
    got = rows(sparse)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4", "5", "6"]  # stopped early, at the 3rd validation
    assert [bool(r["val_f_score"]) for r in got] == [False, True] * 3
    final = load(sparse / "checkpoints" / "final_model.pth")
    assert final["early_stopping"]["stopped"] and final["early_stopping"]["bad_epochs"] == 2
    assert "Early stopping in phase" in (sparse / "training.log").read_text()
    by_epoch = {e: load(sparse / "checkpoints" / f"checkpoint_epoch_{e}.pth") for e in range(1, 7)}
    # the counter moves at validations only: epoch 3 and 5 keep what 2 and 4 left
    assert [by_epoch[e]["early_stopping"]["bad_epochs"] for e in range(1, 7)] == [0, 0, 0, 1, 1, 2]
    # the plateau stepped once per validation (its last_epoch counts steps), and halved the LR after 4 and 6
    assert [by_epoch[e]["scheduler_state_dict"]["last_epoch"] for e in range(1, 7)] == [0, 1, 1, 2, 2, 3]
    assert [float(r["lr"]) for r in got] == [8e-4] * 4 + [4e-4] * 2
    # best_model.pth: a validated epoch's, the best validated score
    scores = {int(r["epoch"]): float(r["val_f_score"]) for r in got if r["val_f_score"]}
    best = load(sparse / "checkpoints" / "best_model.pth")
    assert best["epoch"] == best["best_epoch"] == final["best_epoch"] == max(scores, key=scores.get)
    assert [by_epoch[e]["best_epoch"] for e in range(1, 7)] == [0, 2, 2, 4, 4, 6]
    assert best["best_f_score"] == scores[best["epoch"]]


def test_early_stop_after_a_resume_at_the_uninterrupted_epoch(sparse, tmp_path):
    """Resumed after epoch 5 (no validation; one bad validation counted): the run stops at epoch 6 as the
    uninterrupted one did, which it would not if the early-stopping counter restarted at 0 (it would run to 8)."""
    ckpt = sparse / "checkpoints" / "checkpoint_epoch_5.pth"
    stopped = load(ckpt)
    assert stopped["early_stopping"]["bad_epochs"] == 1 and stopped["scheduler_state_dict"]["best"] > float("-inf")
    assert all("exp_avg" in s for s in stopped["optimizer_state_dict"]["state"].values())  # Adam's state
    out, got = resume_from(ckpt, tmp_path / "resumed", *SPARSE, cwd=tmp_path)
    assert_resumed(out, ckpt, stopped["global_step"], got)
    ref = load(sparse / "checkpoints" / "final_model.pth")
    assert got["epoch"] == ref["epoch"] == 6 and got["early_stopping"] == ref["early_stopping"]
    assert_same_state(got, ref)  # Adam's moments, the plateau, the RNG
    assert got["best_f_score"] == ref["best_f_score"] and rows(tmp_path / "resumed") == rows(sparse)


def test_a_resume_keeps_the_stored_best_until_a_validation_beats_it(sparse, tmp_path):
    """Resumed after epoch 4 (its best): epoch 5 is not validated, so its file carries epoch 4's best on, as the
    uninterrupted run's checkpoint_epoch_5.pth does; a restore that dropped the stored best would hold none there."""
    ckpt = sparse / "checkpoints" / "checkpoint_epoch_4.pth"
    stopped = load(ckpt)
    assert stopped["best_epoch"] == 4 and stopped["best_f_score"] > 0
    out, got = resume_from(ckpt, tmp_path / "resumed", *SPARSE, "trainer.save_interval=1", "trainer.keep_last=10",
                           cwd=tmp_path)
    assert_resumed(out, ckpt, stopped["global_step"], got)
    fifth, ref = (load(d / "checkpoints" / "checkpoint_epoch_5.pth") for d in (tmp_path / "resumed", sparse))
    assert not rows(sparse)[4]["val_f_score"]  # epoch 5: no validation
    assert_same_state(fifth, ref)  # best_epoch included
    assert (fifth["best_epoch"], fifth["best_f_score"]) == (ref["best_epoch"], ref["best_f_score"]) == (
        4, stopped["best_f_score"])
    assert_same_state(got, load(sparse / "checkpoints" / "final_model.pth"))


# --- trainer.ema.validate=false ------------------------------------------------------------------------------------

def test_ema_not_validated_uses_the_raw_weights_and_still_saves_the_ema(parent_run, tmp_path):
    """The same run as parent_run (conftest) plus an EMA that is not validated: the EMA does not change training, so
    every score and best_model.pth must be parent_run's, while the EMA (other weights) is saved beside them."""
    run_dir = tmp_path / "ema"
    train_tiny(run_dir, "trainer.save_interval=1", "trainer.keep_last=1", "trainer.ema.decay=0.9",
               "trainer.ema.validate=false", cwd=tmp_path)
    assert rows(run_dir) == rows(parent_run)  # every validation scored the raw weights
    for name in ("final_model.pth", "best_model.pth"):
        got, plain = load(run_dir / "checkpoints" / name), load(parent_run / "checkpoints" / name)
        assert got["validated_weights"] == "model" and got["epoch"] == plain["epoch"]
        assert same_weights(got["model_state_dict"], plain["model_state_dict"])
        assert got["best_f_score"] == plain["best_f_score"] and got["best_epoch"] == plain["best_epoch"]
        assert got["ema_updates"] == got["global_step"] > 0
        # the EMA is saved under the model's keys, and is other weights (validating it would give other scores)
        assert got["ema_state_dict"].keys() == got["model_state_dict"].keys()
        assert not same_weights(got["ema_state_dict"], got["model_state_dict"])


# --- project-analyze --streak ------------------------------------------------------------------------------------

# Best 0.45 at 3, three validations without a new best (4-6), a new best at 7.
VAL = [0.28, 0.36, 0.45, 0.44, 0.43, 0.44, 0.48, 0.50]


def test_analyze_streak_option(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "phase", "lr", "train_loss", "train_f_score", "val_loss", "val_f_score"])
        w.writeheader()
        for i, v in enumerate(VAL):
            w.writerow({"epoch": i + 1, "phase": "train", "lr": 1e-3, "train_loss": 0.5 - i / 100,
                        "train_f_score": 0.5 + i / 100, "val_loss": 1 - v, "val_f_score": v})
    verdicts = {}
    for streak in (3, 4):
        capsys.readouterr()
        assert analyze.main([str(run_dir), "--streak", str(streak), "--json", "--out", str(tmp_path / "a.png")]) == 0
        verdicts[streak] = json.loads(capsys.readouterr().out)
    assert verdicts[3]["streak"] == 3 and verdicts[4]["streak"] == 4
    assert [(r["epoch"], r["validations_without_improvement"]) for r in verdicts[3]["recoveries"]] == [(7, 3)]
    assert verdicts[4]["recoveries"] == []  # 3 validations are not a streak of 4
    assert analyze.main([str(run_dir), "--streak", "3", "--out", str(tmp_path / "a.png")]) == 0
    assert "epoch 7" in capsys.readouterr().out  # the report names the recovery


# --- project-preview --epoch -------------------------------------------------------------------------------------

FACES = ["data=celebamask", "data.image_size=32", "data.num_workers=0", "data.val_fraction=0.25",
         "augment=face_parsing"]


def previewed(monkeypatch, tmp_path, *args):
    """What project-preview draws (its samples), from main(argv) in-process."""
    drawn = []
    monkeypatch.setattr(preview, "draw", lambda data, shown, out, title: drawn.append((data, shown)) or out)
    assert preview.main([*args, "--n", "4", "--out", str(tmp_path / "p.png")]) == 0
    (got,) = drawn
    return got


def test_preview_epoch_shows_that_epochs_augmentation(tmp_path, monkeypatch):
    faces = fake_faces.write(tmp_path / "faces", train=12, test=2, size=40)
    overrides = [*FACES, f"data.root={faces}"]
    data, two = previewed(monkeypatch, tmp_path, *overrides, "--epoch", "2")
    _, again = previewed(monkeypatch, tmp_path, *overrides, "--epoch", "2")
    _, three = previewed(monkeypatch, tmp_path, *overrides, "--epoch", "3")
    for a, b in zip(two, again):  # the same epoch: the same samples, bit for bit
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(two, three))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    seed = cfg.seed
    first = batch_order(len(data["train"]), cfg.trainer.batch_size, seed, 1)[0][0].item()  # epoch 2 (0-based 1)
    assert torch.equal(two[0][0], data["train"][(seed, 1, first)][0])  # as training draws it in epoch 2
    # the same image in epoch 3 is augmented otherwise: the epoch changes the augmentation, not only the order
    assert not torch.equal(data["train"][(seed, 1, first)][0], data["train"][(seed, 2, first)][0])
