"""One scorer per task: what validation (the objectives' val meters), project-evaluate and trainer.test_after_fit
all count and compute. Counts stay on the device (no host sync per batch); the scores are computed from them once.

The definitions are project/metrics.py's: dataset_f1 and mIoU from one confusion matrix over the split, image_f1
the mean over images of each image's F1 (background included). Validation reports them under training's names
(`compute`: f_score, image_f_score, the columns of metrics.csv), project-evaluate under their own (`scores`).
"""
import math

import torch

from project.metrics import ConfusionMatrix, ImageF1, class_map, image_confusion


class SegmentationScorer:
    """Per-pixel classes: one confusion matrix (dataset F1, per-class F1 and IoU, pixel accuracy, mIoU) and the
    per-image F1s (image F1)."""

    def __init__(self, num_classes: int, device, ignore_index: int = 255):
        self.confusion = ConfusionMatrix(num_classes, device, ignore_index)
        self.image_f1 = ImageF1(num_classes, device, ignore_index)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Count a batch of (B, K, H, W) logits or probabilities against (B, H, W) masks; returns each image's F1
        (B,), on the device."""
        # one class map and one count for both F-scores: each image's confusion counts, whose sum over the batch is
        # the dataset's (the class map costs more than the counts)
        counts = image_confusion(class_map(logits), target, self.confusion.n, self.confusion.ignore_index)
        self.confusion.add_counts(counts.sum(0))
        return self.image_f1.add_counts(counts)

    def compute(self) -> dict:
        """Training's names (metrics.csv): f_score (dataset F1), pixel_acc, image_f_score (image F1)."""
        return {**self.confusion.compute(), "image_f_score": self.image_f1.compute()}

    def per_class(self) -> dict[str, list[float]]:
        """F1 and IoU of every class (NaN for a class neither in the truth nor predicted)."""
        return self.confusion.per_class()

    def scores(self) -> dict:
        """project-evaluate's names: dataset_f1, image_f1, miou (background included), pixel_acc."""
        summary = self.compute()
        iou = torch.tensor(self.per_class()["iou"], dtype=torch.float64)
        return {"dataset_f1": summary["f_score"], "image_f1": summary["image_f_score"],
                "miou": iou.nanmean().item() if not iou.isnan().all() else math.nan,
                "pixel_acc": summary["pixel_acc"]}

    def rows(self, classes: list[str]) -> list[dict]:
        """One row per class: f1, iou, and its labelled pixels."""
        per_class, pixels = self.per_class(), self.confusion.matrix.sum(1).cpu().tolist()
        return [{"class": name, "f1": f1, "iou": iou, "pixels": int(px)} for name, f1, iou, px in
                zip(classes, per_class["f1"], per_class["iou"], pixels)]

    @property
    def matrix(self) -> torch.Tensor:
        return self.confusion.matrix


class ClassificationScorer:
    """Image classes: one confusion matrix (true class x predicted class), from which accuracy and precision,
    recall and F1 per class."""

    def __init__(self, num_classes: int, device):
        self.n = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch of (B, K) logits or probabilities against (B,) class indices."""
        idx = target * self.n + class_map(logits)
        self.matrix += torch.bincount(idx, minlength=self.n * self.n).view(self.n, self.n)

    def accuracy(self) -> float:
        m = self.matrix.double().cpu()
        return (m.diag().sum() / m.sum().clamp(min=1)).item()

    def per_class(self) -> dict[str, list[float]]:
        """Precision and recall of every class (NaN for a class never predicted, or never true), their F1, and
        how many images of it there were."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        precision = torch.where(m.sum(0) > 0, tp / m.sum(0).clamp(min=1), torch.nan)
        recall = torch.where(m.sum(1) > 0, tp / m.sum(1).clamp(min=1), torch.nan)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.nan)
        return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                "images": m.sum(1).tolist()}

    def rows(self, classes: list[str]) -> list[dict]:
        """One row per class: precision, recall, f1, and its images."""
        s = self.per_class()
        return [{"class": name, "precision": p, "recall": r, "f1": f, "images": int(k)} for name, p, r, f, k
                in zip(classes, s["precision"], s["recall"], s["f1"], s["images"])]
