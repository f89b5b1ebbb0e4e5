"""Segmentation metrics from a confusion matrix accumulated on the device (no host sync per batch)."""
import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int, device, ignore_index: int = 255):
        self.n, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(dim=1)
        keep = target != self.ignore_index
        idx = target[keep] * self.n + pred[keep]
        self.matrix += torch.bincount(idx, minlength=self.n * self.n).view(self.n, self.n)

    def compute(self) -> dict:
        """Mean F-score (F1 = Dice) over the foreground classes seen in target or prediction, and pixel accuracy."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        fp, fn = m.sum(0) - tp, m.sum(1) - tp
        denom = 2 * tp + fp + fn
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.nan)[1:]  # class 0 is background
        f_score = f1.nanmean().item() if not f1.isnan().all() else 0.0
        return {"f_score": f_score, "pixel_acc": (tp.sum() / m.sum().clamp(min=1)).item()}
