"""The one scorer per task (project/evaluation/scorers.py) that validation and project-evaluate share: its
numbers against numpy definitions, and validation's meters reporting the same numbers under training's names."""
import math

import numpy as np
import torch

from project.evaluation.scorers import ClassificationScorer, SegmentationScorer
from project.objectives import _ClassValMeter, _SegValMeter


def test_segmentation_scores_are_the_numpy_definitions_and_validation_reports_them():
    g = torch.Generator().manual_seed(0)
    n, scorer, meter = 4, SegmentationScorer(4, "cpu"), _SegValMeter(4, "cpu", 255, ["bg", "a", "b", "c"])
    confusion, per_image = np.zeros((n, n), dtype=np.int64), []
    for _ in range(3):
        logits, masks = torch.randn(2, n, 6, 7, generator=g), torch.randint(0, n, (2, 6, 7), generator=g)
        masks[0, 0, :3] = 255
        got = scorer.update(logits, masks)
        meter.update(logits, (None, masks))
        for pred, gt, f1 in zip(logits.argmax(1).numpy(), masks.numpy(), got.tolist()):
            valid = gt != 255
            np.add.at(confusion, (gt[valid], pred[valid]), 1)
            f1s = []
            for c in np.unique(gt[valid]):
                tp = np.sum((pred == c) & (gt == c) & valid)
                p, r = tp / (np.sum((pred == c) & valid) + 1e-7), tp / (np.sum(gt == c) + 1e-7)
                f1s.append(2 * p * r / (p + r + 1e-7))
            per_image.append(np.mean(f1s))
            assert math.isclose(f1, per_image[-1], abs_tol=1e-12)
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    f1, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    scores = scorer.scores()
    assert np.array_equal(scorer.matrix.numpy(), confusion)
    assert math.isclose(scores["dataset_f1"], np.mean(f1[1:]), abs_tol=1e-12)
    assert math.isclose(scores["image_f1"], np.mean(per_image), abs_tol=1e-12)
    assert math.isclose(scores["miou"], np.mean(iou), abs_tol=1e-12)
    assert math.isclose(scores["pixel_acc"], tp.sum() / confusion.sum(), abs_tol=1e-12)
    assert meter.compute() == {"f_score": scores["dataset_f1"], "pixel_acc": scores["pixel_acc"],
                               "image_f_score": scores["image_f1"]}
    rows = scorer.rows(["bg", "a", "b", "c"])
    assert meter.per_class() == {**{f"f1/{r['class']}": r["f1"] for r in rows},
                                 **{f"iou/{r['class']}": r["iou"] for r in rows}}
    assert [r["pixels"] for r in rows] == confusion.sum(1).tolist()


def test_classification_scores_are_the_numpy_definitions_and_validation_reports_them():
    g = torch.Generator().manual_seed(1)
    scorer, meter = ClassificationScorer(3, "cpu"), _ClassValMeter("cpu", {"label": 3}, ["x", "y", "z"])
    truth, predicted = [], []
    for _ in range(4):
        logits, labels = torch.randn(5, 3, generator=g), torch.randint(0, 3, (5,), generator=g)
        scorer.update(logits, labels)
        meter.update(({"label": logits}, {"label": labels}), (logits,))
        truth += labels.tolist()
        predicted += logits.argmax(1).tolist()
    truth, predicted = np.array(truth), np.array(predicted)
    assert math.isclose(scorer.accuracy(), np.mean(truth == predicted), abs_tol=1e-12)
    per_class = meter.per_class()
    for row in scorer.rows(["x", "y", "z"]):
        c = ["x", "y", "z"].index(row["class"])
        tp = np.sum((truth == c) & (predicted == c))
        assert row["images"] == np.sum(truth == c)
        assert math.isclose(row["recall"], tp / np.sum(truth == c))
        assert per_class[f"recall/{row['class']}"] == row["recall"]
        if np.sum(predicted == c):
            assert math.isclose(row["precision"], tp / np.sum(predicted == c))
        else:
            assert math.isnan(row["precision"])
        assert per_class[f"precision/{row['class']}"] == row["precision"] or math.isnan(row["precision"])
