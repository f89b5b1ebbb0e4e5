"""Segmentation metrics accumulated on the device (no host sync per batch).

Two definitions of "F-score", which must never be compared as one (see README, Scores that say what they measure):
  dataset_f1  one confusion matrix over the whole split; per-class F1 = 2tp / (2tp + fp + fn); the mean over the
              foreground classes (background excluded): the papers' convention (FaRL, DML-CSR).
  image_f1    per image, over the classes present in its ground truth (background included, ignore_index pixels
              excluded), F1 = 2PR / (P + R) with eps 1e-7 in P, R and F; the image's mean, then the mean over
              images: the face-parsing course benchmark's.
"""
import torch

EPS = 1e-7


def class_map(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The predicted class at each position: the index of the largest score along `dim` (the first one on a tie, a
    NaN counting as the largest), as argmax gives it. max(dim).indices, because torch's CPU argmax over a dimension
    that is not the last is 3-24x slower: for a validation batch of 8 x 19 x 512 x 512 logits, 219 ms against 81 ms
    on the 2-core CPU VM (docs/performance.md)."""
    return scores.max(dim=dim).indices


class ConfusionMatrix:
    def __init__(self, num_classes: int, device, ignore_index: int = 255):
        self.n, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.add(class_map(logits), target)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch of predicted class maps (B, H, W) against the targets."""
        keep = target != self.ignore_index
        idx = target[keep] * self.n + pred[keep]
        self.add_counts(torch.bincount(idx, minlength=self.n * self.n).view(self.n, self.n))

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add (n, n) counts of (true, predicted) pixels, e.g. a batch's image_confusion summed over its images."""
        self.matrix += counts

    def compute(self) -> dict:
        """Mean F-score (F1 = Dice) over the foreground classes seen in target or prediction, and pixel accuracy."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        f1 = per_class_f1(m)[1:]  # class 0 is background
        f_score = f1.nanmean().item() if not f1.isnan().all() else 0.0
        return {"f_score": f_score, "pixel_acc": (tp.sum() / m.sum().clamp(min=1)).item()}

    def per_class(self) -> dict[str, list[float]]:
        """F1 and IoU of every class (NaN for a class neither in the targets nor predicted)."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        return {"f1": per_class_f1(m).tolist(), "iou": iou.tolist()}


def per_class_f1(m: torch.Tensor) -> torch.Tensor:
    tp = m.diag()
    denom = 2 * tp + (m.sum(0) - tp) + (m.sum(1) - tp)
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.nan)


def image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B, n, n) counts of (true, predicted) class per image of a batch of (B, H, W) class maps, in one bincount;
    summed over the batch it is the dataset's confusion matrix, so both F-scores count each pixel once. Ignored
    pixels go to one extra bin that is dropped: no boolean indexing, which copies the kept pixels and, on a GPU,
    waits for the device to learn how many there are."""
    b, n = len(target), num_classes
    image = torch.arange(b, device=target.device).view(b, 1, 1)
    idx = torch.where(target == ignore_index, b * n * n, (image * n + target) * n + pred)
    return torch.bincount(idx.flatten(), minlength=b * n * n + 1)[:-1].view(b, n, n)


def image_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The benchmark's score of each image of a batch: (B,) float64. pred and target are (B, H, W) class maps."""
    return f1_per_image(image_confusion(pred, target, num_classes, ignore_index))


def f1_per_image(counts: torch.Tensor) -> torch.Tensor:
    """Each image's F1 from its (n, n) counts (image_confusion): (B,) float64."""
    m = counts.double()
    tp = m.diagonal(dim1=1, dim2=2)
    gt, predicted = m.sum(2), m.sum(1)
    precision, recall = tp / (predicted + EPS), tp / (gt + EPS)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    present = gt > 0
    return (f1 * present).sum(1) / present.sum(1).clamp(min=1)


class ImageF1:
    """Sum and count of per-image scores, on the device."""

    def __init__(self, num_classes: int, device, ignore_index: int = 255):
        self.n, self.ignore_index = num_classes, ignore_index
        self.sum, self.count = torch.zeros((), dtype=torch.float64, device=device), 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch; returns its images' scores (B,), for a caller that reports each image."""
        return self.add(class_map(logits), target)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch of predicted class maps (B, H, W); returns its images' scores (B,)."""
        return self.add_counts(image_confusion(pred, target, self.n, self.ignore_index))

    def add_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Add a batch's per-image counts (image_confusion); returns its images' scores (B,)."""
        scores = f1_per_image(counts)
        self.sum += scores.sum()
        self.count += len(counts)
        return scores

    def compute(self) -> float:
        return (self.sum / max(self.count, 1)).item()
