"""What a phase optimises and how it is scored.

An objective turns (model, batch) into a loss and keeps running val/train statistics on the device (no host
sync per step). The `loss` config group holds the supervised objective of the task; a phase may name another
(SimMIM pretraining). Each declares its monitored metric, whether higher is better, and the checkpoint keys
under which its best and current values are stored.
"""
import torch
import torch.nn.functional as F

from project.errors import UserError
from project.losses import CEDiceLoss
from project.evaluation.scorers import ClassificationScorer, SegmentationScorer
from project.metrics import ConfusionMatrix, class_map


class Segmentation:
    """Per-pixel classes; batches are (images, masks). Scored by `metric` (project/metrics.py): dataset_f1, the
    mean foreground F1 of one confusion matrix (papers), or image_f1, the mean per-image F1 over the classes in
    each image's truth, background included (the face-parsing course benchmark). Validation reports both."""

    higher_is_better, is_pretrain = True, False
    tasks = ("segmentation",)  # the data tasks it trains (project/tasks.py)
    METRICS = {"dataset_f1": ("f_score", {"best": "best_f_score", "current": "val_f_score"}),
               "image_f1": ("image_f_score", {"best": "best_image_f_score", "current": "val_image_f_score"})}

    def __init__(self, dice_weight: float = 1.0, ignore_index: int = 255, metric: str = "dataset_f1"):
        if metric not in self.METRICS:
            raise UserError(f"loss.metric={metric!r} is unknown: use dataset_f1 (one confusion matrix, mean F1 over "
                            "the foreground classes: papers) or image_f1 (per image over the classes in its truth, "
                            "background included: the face-parsing benchmark).")
        self.criterion = CEDiceLoss(dice_weight=dice_weight, ignore_index=ignore_index)
        self.ignore_index, self.metric = ignore_index, metric
        self.monitor, self.keys = self.METRICS[metric]

    def __call__(self, model, batch, generator=None):
        images, masks = batch
        logits = model(images)
        return self.criterion(logits, masks), logits

    def meter(self, data, device):
        return _SegMeter(data["model_args"]["num_classes"], device, self.ignore_index)

    def val_meter(self, data, device):
        return _SegValMeter(data["model_args"]["num_classes"], device, self.ignore_index, data.get("classes"))


class _SegMeter:
    def __init__(self, num_classes, device, ignore_index):
        self.confusion = ConfusionMatrix(num_classes, device, ignore_index)

    def update(self, outputs, batch):
        self.confusion.update(outputs, batch[1])

    def compute(self):
        return self.confusion.compute()

    def state_dict(self):
        return {"confusion": self.confusion.matrix.cpu()}

    def load_state_dict(self, state_dict):
        self.confusion.matrix.copy_(state_dict["confusion"])


class _SegValMeter:
    """Validation: the segmentation scorer (project/evaluation/scorers.py, as project-evaluate's): both F-scores,
    and F1 and IoU per class."""

    def __init__(self, num_classes, device, ignore_index, classes=None):
        self.scorer = SegmentationScorer(num_classes, device, ignore_index)
        self.classes = class_names(classes, num_classes)

    def update(self, outputs, batch):
        self.scorer.update(outputs, batch[1])

    def compute(self):
        return self.scorer.compute()

    def per_class(self) -> dict:
        scores = self.scorer.per_class()
        return {f"{metric}/{name}": value for metric in ("f1", "iou")
                for name, value in zip(self.classes, scores[metric])}


def class_names(classes, n: int) -> list[str]:
    return [str(c) for c in classes] if classes and len(classes) == n else [str(i) for i in range(n)]


class Classification:
    """Image classes, one task (batches (images, labels), model(images) -> logits) or several (batches
    (images, tabular, labels_task1, labels_task2, ...), model(images, tabular) -> {task: logits}).
    Scored by accuracy, averaged over tasks."""

    monitor, higher_is_better, is_pretrain = "acc", True, False
    tasks = ("classification", "multitask")
    keys = {"best": "best_val_acc", "current": "val_acc"}

    def __init__(self, label_smoothing: float = 0.0, task_weights: dict | None = None):
        self.label_smoothing, self.task_weights = label_smoothing, dict(task_weights or {})

    def __call__(self, model, batch, generator=None):
        if len(batch) == 2:
            logits, targets = {"label": model(batch[0])}, {"label": batch[1]}
        else:
            images, tabular, *labels = batch
            logits = model(images, tabular)
            targets = dict(zip(logits, labels))
        loss = sum(self.task_weights.get(task, 1.0) * F.cross_entropy(out, targets[task],
                                                                        label_smoothing=self.label_smoothing)
                   for task, out in logits.items())
        return loss, (logits, targets)

    def meter(self, data, device):
        return _AccuracyMeter(device)

    def val_meter(self, data, device):
        tasks = data.get("tasks") or {"label": len(data.get("classes") or [])}
        return _ClassValMeter(device, tasks, data.get("classes"))


class _AccuracyMeter:
    def __init__(self, device):
        self.device, self.correct, self.total = device, {}, 0

    def update(self, outputs, batch):
        logits, targets = outputs
        for task, out in logits.items():
            hits = (class_map(out) == targets[task]).sum()
            self.correct[task] = self.correct.get(task, 0) + hits
        self.total += len(batch[0])

    def compute(self):
        per_task = {f"acc_{t}": (c / max(self.total, 1)).item() for t, c in self.correct.items()}
        mean = sum(per_task.values()) / max(len(per_task), 1)
        return {"acc": mean, **(per_task if len(per_task) > 1 else {})}

    def state_dict(self):
        return {"correct": {t: torch.as_tensor(c).cpu() for t, c in self.correct.items()}, "total": self.total}

    def load_state_dict(self, state_dict):
        self.correct = {t: c.to(self.device) for t, c in state_dict["correct"].items()}
        self.total = state_dict["total"]


class _ClassValMeter(_AccuracyMeter):
    """Validation: accuracy as in training, and precision and recall per class from the classification scorer
    (project/evaluation/scorers.py, as project-evaluate's), one per task."""

    def __init__(self, device, tasks: dict, classes=None):
        super().__init__(device)
        self.scorers = {t: ClassificationScorer(n, device) for t, n in tasks.items()}
        self.names = {t: class_names(classes if len(tasks) == 1 else None, n) for t, n in tasks.items()}

    def update(self, outputs, batch):
        super().update(outputs, batch)
        logits, targets = outputs
        for task, out in logits.items():
            self.scorers[task].update(out, targets[task])

    def per_class(self) -> dict:
        out = {}
        for task, scorer in self.scorers.items():
            scores = scorer.per_class()
            prefix = "" if len(self.scorers) == 1 else f"{task}/"
            for metric in ("precision", "recall"):
                out.update({f"{metric}/{prefix}{name}": v for name, v in zip(self.names[task], scores[metric])})
        return out


class SimMIM:
    """Masked-image pretraining (Xie et al., 2022): hide a random `mask_ratio` of the patches, reconstruct
    the image with the model's light decoder, L1 loss on the hidden pixels only. Needs a model with
    `reconstruct(images, mask)` and `mask_grid()`. Scored by that loss on val (lower is better), with masks
    from a fixed generator so epochs are comparable and validation draws nothing from the training RNG."""

    monitor, higher_is_better, is_pretrain = "recon_loss", False, True
    keys = {"best": "best_recon_loss", "current": "val_recon_loss"}

    def __init__(self, mask_ratio: float = 0.6):
        if not 0 < mask_ratio < 1:
            raise UserError(f"mask_ratio={mask_ratio} is out of range: mask between 0 and 1 of the patches, e.g. 0.6.")
        self.mask_ratio = mask_ratio
        self.val_generator = None

    def __call__(self, model, batch, generator=None):
        if not hasattr(model, "reconstruct"):
            raise UserError(f"The SimMIM objective needs a model with a reconstruction decoder; "
                            f"{type(model).__name__} has none. Use model=swin_mmoe or schedule=single.")
        images = batch[0]
        h, w = model.mask_grid()
        scores = torch.rand(len(images), h * w, generator=generator, device="cpu" if generator else images.device)
        keep = int(round(h * w * (1 - self.mask_ratio)))
        mask = torch.ones_like(scores, dtype=torch.bool)
        mask.scatter_(1, scores.argsort(dim=1)[:, :keep], False)  # exactly mask_ratio of the patches hidden
        mask = mask.view(-1, h, w).to(images.device)
        recon = model.reconstruct(images, mask)
        pixel_mask = F.interpolate(mask[:, None].float(), size=images.shape[2:], mode="nearest")
        loss = (F.l1_loss(recon, images, reduction="none") * pixel_mask).sum() / (
            pixel_mask.sum() * images.shape[1] + 1e-6)
        return loss, loss.detach()

    def meter(self, data, device):
        return _LossMeter(device)


class _LossMeter:
    def __init__(self, device):
        self.sum, self.count = torch.zeros((), device=device, dtype=torch.float64), 0

    def update(self, outputs, batch):
        self.sum += outputs
        self.count += 1

    def compute(self):
        return {"recon_loss": (self.sum / max(self.count, 1)).item()}

    def state_dict(self):
        return {"sum": self.sum.cpu(), "count": self.count}

    def load_state_dict(self, state_dict):
        self.sum, self.count = state_dict["sum"].to(self.sum.device), state_dict["count"]
