"""resume=full continues bit for bit; resume=reset_optimizer restarts from the weights with new values."""
import csv
import time

import pytest

from conftest import (TINY, assert_continued_from, assert_resumed, assert_same_state, load, stop_with_sigterm,
                      train_tiny)


def lrs(run_dir):
    return [float(r["lr"]) for r in csv.DictReader(open(run_dir / "metrics.csv"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 4-epoch reference run (cosine schedule, warm-up, dropout on)."""
    cwd = tmp_path_factory.mktemp("reference")
    train_tiny(cwd / "ref", "trainer.max_epochs=4", cwd=cwd)
    return cwd / "ref"


def test_full_resume_after_sigterm_mid_epoch_is_bit_exact(uninterrupted, tmp_path):
    """A 4-epoch run stopped by SIGTERM in epoch 2, then `resume=full`, ends with the reference's weights."""
    run_dir = tmp_path / "stopped"
    out = stop_with_sigterm(run_dir, *TINY, "trainer.max_epochs=4", cwd=tmp_path)
    stopped = load(run_dir / "checkpoints" / "last.pth")
    assert "Caught SIGTERM" in out and not (run_dir / "checkpoints" / "final_model.pth").exists()
    assert (stopped["epoch"], stopped["batch_in_epoch"]) != (4, 0), "the run finished before the signal"
    assert stopped["batch_in_epoch"] > 0, f"stopped at the end of epoch {stopped['epoch']}, not mid-epoch"

    resumed = train_tiny(tmp_path / "resumed", "trainer.max_epochs=4", "resume=full", f"resume.checkpoint={run_dir}",
                         cwd=tmp_path)
    ref = load(uninterrupted / "checkpoints" / "final_model.pth")
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert_same_state(got, ref)
    assert_resumed(resumed.stdout, run_dir / "checkpoints" / "last.pth", stopped["global_step"], got)
    assert got["global_step"] == ref["global_step"] and got["epoch"] == 4
    assert got["best_f_score"] == ref["best_f_score"] and got["best_epoch"] == ref["best_epoch"]
    assert lrs(tmp_path / "resumed") == lrs(uninterrupted)  # every epoch's LR, history included
    assert got["lineage"][-1]["mode"] == "full" and got["lineage"][-1]["path"] == str(run_dir / "checkpoints" / "last.pth")


def test_full_resume_extends_and_matches_a_longer_run(tmp_path):
    """Train 2 epochs, then `resume=full trainer.max_epochs=4` equals 4 epochs straight (step schedule,
    which does not depend on the run length) including Adam moments, RNG and the per-epoch LR."""
    sched = ["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.7"]
    train_tiny(tmp_path / "straight", *sched, "trainer.max_epochs=4", cwd=tmp_path)
    train_tiny(tmp_path / "short", *sched, "trainer.max_epochs=2", cwd=tmp_path)
    proc = train_tiny(tmp_path / "longer", *sched, "trainer.max_epochs=4", "resume=full",
                      f"resume.checkpoint={tmp_path / 'short'}", cwd=tmp_path)
    assert "trainer.max_epochs" in proc.stdout and "schedule is recomputed" in proc.stdout
    a = load(tmp_path / "straight" / "checkpoints" / "final_model.pth")
    b = load(tmp_path / "longer" / "checkpoints" / "final_model.pth")
    assert_same_state(a, b)  # weights, every Adam tensor (exp_avg, exp_avg_sq, step), scheduler, RNG
    short = tmp_path / "short" / "checkpoints" / "last.pth"
    assert_resumed(proc.stdout, short, load(short)["global_step"], b)
    assert lrs(tmp_path / "longer") == lrs(tmp_path / "straight")
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "longer" / "metrics.csv"))] == ["1", "2", "3", "4"]


def test_full_resume_applies_a_changed_lr(parent_run, tmp_path):
    """The restored optimizer state must not silently keep the old LR."""
    proc = train_tiny(tmp_path / "lower", "trainer.max_epochs=3", "scheduler=none", "optimizer.lr=1e-4",
                      "resume=full", f"resume.checkpoint={parent_run}", cwd=tmp_path)
    assert "optimizer.lr" in proc.stdout and "applied over the restored optimizer state" in proc.stdout
    ckpt = load(tmp_path / "lower" / "checkpoints" / "last.pth")
    parent = parent_run / "checkpoints" / "last.pth"
    assert_resumed(proc.stdout, parent, load(parent)["global_step"], ckpt)  # epoch 2's position, not a retrain
    # the parent's weights and Adam moments, moved by 6 steps at 1e-4 only: restored, and the new LR in effect
    assert_continued_from(ckpt, load(parent), lr=1e-4)
    assert [g["lr"] for g in ckpt["optimizer_state_dict"]["param_groups"]] == [1e-4]
    assert lrs(tmp_path / "lower")[-1] == 1e-4
    assert ckpt["epoch"] == 3


def test_reset_optimizer_fresh_state_new_values_and_lineage(parent_run, tmp_path):
    parent_best = load(parent_run / "checkpoints" / "best_model.pth")
    proc = train_tiny(tmp_path / "child", "resume=reset_optimizer", f"resume.checkpoint={parent_run}",
                      "model.dropout=0.25", "trainer.max_epochs=1", cwd=tmp_path)
    out = proc.stdout
    assert "parameter" in out and "checkpoint" in out and "now" in out  # the changes table
    assert "model.dropout" in out and "0.1" in out and "0.25" in out
    assert "dropout p=0.25" in out  # every dropout module of the built model
    assert "the starting weights" in out  # did the continuation beat the weights it started from?

    child = load(tmp_path / "child" / "checkpoints" / "final_model.pth")
    steps_per_epoch = 6
    assert child["epoch"] == 1 and child["global_step"] == steps_per_epoch  # counted from the start
    adam_steps = {float(s["step"]) for s in child["optimizer_state_dict"]["state"].values()}
    assert adam_steps == {steps_per_epoch}  # fresh moments, not the parent's 12 steps + 6
    assert child["config"]["model"]["dropout"] == 0.25
    (entry,) = child["lineage"]
    assert entry["path"] == str(parent_run / "checkpoints" / "best_model.pth")
    assert entry["mode"] == "reset_optimizer" and entry["epoch"] == parent_best["epoch"]
    assert entry["changed"]["model.dropout"] == [0.1, 0.25]
    import hashlib
    assert entry["sha256"] == hashlib.sha256((parent_run / "checkpoints" / "best_model.pth").read_bytes()).hexdigest()
    assert child["parent_best"]["score"] == parent_best["best_f_score"]
    assert "Resuming (reset_optimizer) from" in (tmp_path / "child" / "training.log").read_text()


def test_latest_picks_the_newest_run(tmp_path):
    """`resume.checkpoint=latest` continues the newest run: b (1 epoch, written last), not a. a trained 2 epochs
    straight with the same recipe (a schedule that does not depend on the run length), so b continued to 2
    epochs must end with a's state bit for bit."""
    fixed = ["scheduler=none"]
    train_tiny(tmp_path / "outputs" / "a", *fixed, cwd=tmp_path)  # TINY: 2 epochs
    time.sleep(0.05)
    train_tiny(tmp_path / "outputs" / "b", *fixed, "trainer.max_epochs=1", cwd=tmp_path)
    proc = train_tiny(tmp_path / "outputs" / "c", *fixed, "resume=full", cwd=tmp_path)  # resume.checkpoint=latest
    newest = tmp_path / "outputs" / "b" / "checkpoints" / "last.pth"
    resumed = load(tmp_path / "outputs" / "c" / "checkpoints" / "final_model.pth")
    assert_resumed(proc.stdout, newest, load(newest)["global_step"], resumed)  # b's epoch 1, not a fresh start
    assert_same_state(resumed, load(tmp_path / "outputs" / "a" / "checkpoints" / "final_model.pth"))
