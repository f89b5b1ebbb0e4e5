"""Scores that say what they measure: both F-scores and per-class numbers at every validation, a continuation's
starting weights scored here and kept when nothing beats them, another metric restarting the best."""
import math

import torch

from conftest import assert_continued_from, assert_resumed, load, train_tiny, training_rows


def rows(path):
    return training_rows(path)


def test_reset_optimizer_scores_its_starting_weights_first(parent_run, tmp_path):
    """The parent's best weights are scored on this run's data with this run's metric before training: a
    metrics.csv row (epoch 0, phase start), the first best_model.pth, and the number the final line compares."""
    proc = train_tiny(tmp_path / "child", "resume=reset_optimizer", f"resume.checkpoint={parent_run}",
                      "trainer.max_epochs=1", "optimizer.lr=1e-9", cwd=tmp_path)  # an LR that cannot improve
    metrics = rows(tmp_path / "child" / "metrics.csv")
    assert [(r["epoch"], r["phase"]) for r in metrics] == [("0", "start"), ("1", "train")]
    parent = load(parent_run / "checkpoints" / "best_model.pth")
    start = float(metrics[0]["val_f_score"])
    assert start == parent["best_f_score"]  # the same weights, data and metric give the parent's own score back
    assert "No epoch beat the starting weights" in proc.stdout
    best = load(tmp_path / "child" / "checkpoints" / "best_model.pth")
    assert best["epoch"] == 0 and best["best_f_score"] == start
    assert all(torch.equal(best["model_state_dict"][k], v) for k, v in parent["model_state_dict"].items())
    assert best["start_score"] == {"score": start, "epoch": 0, "metric": "f_score"}


def test_both_scores_and_per_class_numbers_at_every_validation(parent_run):
    metrics = rows(parent_run / "metrics.csv")
    per_class = rows(parent_run / "per_class.csv")
    assert all(0 <= float(r["val_image_f_score"]) <= 1 and 0 <= float(r["val_f_score"]) <= 1 for r in metrics)
    assert [r["epoch"] for r in per_class] == [r["epoch"] for r in metrics] == ["1", "2"]
    names = ("background", "ellipse", "rectangle", "triangle")  # data=shapes' class names, in index order
    assert list(per_class[0])[2:] == [f"{m}/{n}" for m in ("f1", "iou") for n in names]
    best = load(parent_run / "checkpoints" / "best_model.pth")
    row = next(r for r in per_class if int(r["epoch"]) == best["best_epoch"])
    assert best["best_per_class"].keys() == set(row) - {"epoch", "phase"}
    assert all(math.isclose(float(row[k]), v) or (math.isnan(v) and row[k] == "nan")
               for k, v in best["best_per_class"].items())
    # dataset F-score = the mean of the foreground F1s, when every foreground class was seen
    f1 = [float(row[f"f1/{n}"]) for n in names[1:]]
    if not any(map(math.isnan, f1)):
        assert math.isclose(sum(f1) / 3, float(next(r for r in metrics if r["epoch"] == row["epoch"])["val_f_score"]))


def test_resume_full_with_another_metric_restarts_the_best(parent_run, tmp_path):
    # a small LR for epoch 3, so the weights show they continued the parent's (assert_continued_from)
    proc = train_tiny(tmp_path / "more", "resume=full", f"resume.checkpoint={parent_run}", "trainer.max_epochs=3",
                      "loss.metric=image_f1", "scheduler=none", "optimizer.lr=1e-5", cwd=tmp_path)
    assert "loss.metric" in proc.stdout and "another metric, so the best score starts afresh" in proc.stdout
    final = load(tmp_path / "more" / "checkpoints" / "final_model.pth")
    parent = parent_run / "checkpoints" / "last.pth"
    assert_resumed(proc.stdout, parent, load(parent)["global_step"], final)  # epoch 2's position, not a retrain
    # the parent's weights and Adam moments went on for epoch 3's 6 steps (lr 1e-5): restored, not retrained
    assert_continued_from(final, load(parent), lr=1e-5)
    assert final["monitor"] == "image_f_score" and final["best_epoch"] == 3  # the only epoch scored by it
    assert final["best_image_f_score"] == float(rows(tmp_path / "more" / "metrics.csv")[-1]["val_image_f_score"])
    # per_class.csv continues the parent's rows, like metrics.csv
    assert [r["epoch"] for r in rows(tmp_path / "more" / "per_class.csv")] == ["1", "2", "3"]
