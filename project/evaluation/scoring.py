"""Scoring a model on a split, the library under project-evaluate and trainer.test_after_fit: the weights of a
checkpoint loaded with their config, the split built from it without augmentation, every image read at its original
size, the scores per class and per image (project-evaluate, project/commands/evaluate.py, prints and writes them).
"""
import json
import os
import re
from pathlib import Path

from project.checkpoints import trust
from project.errors import UserError
from project.rundirs.reading import plain

FORMAT = "project-evaluation-v1"
DEFINITIONS = {
    "dataset_f1": "one confusion matrix over the split; per-class F1 = 2tp / (2tp + fp + fn); the mean over the "
                  "foreground classes seen in truth or prediction (background excluded): the papers' F-score",
    "image_f1": "per image, F1 = 2PR / (P + R) with eps 1e-7 over the classes in its ground truth (background "
                "included, ignore_index excluded), the image's mean; then the mean over images: the face-parsing "
                "benchmark's score",
    "miou": "one confusion matrix; per-class IoU = tp / (tp + fp + fn); the mean over the classes seen in truth or "
            "prediction, background included",
    "pixel_acc": "labelled pixels predicted right / labelled pixels",
    "acc": "images predicted right / images",
}
MONITORS = {"f_score": "dataset_f1", "image_f_score": "image_f1"}  # training's names for the same definitions


def run_dir_of(path: Path) -> Path | None:
    return path.parent.parent if path.parent.name == "checkpoints" else None


def label_of(path: Path) -> str:
    """best, last, final for our files; the file's stem for others."""
    from project.checkpoints.resolve import FILES

    return {v: k for k, v in FILES.items()}.get(path.name, path.stem)


def with_data_root(cfg, data_root, path: Path) -> None:
    """Replace data.root (--data-root) and check that the folder is there, with the fix named."""
    from omegaconf import open_dict

    if "root" not in cfg.data:
        raise UserError(f"The data of {path} ({cfg.data.get('_target_')}) is generated, not read from files, so "
                        "there are no original images to score. project-evaluate scores folder data (data="
                        "seg_folder, celebamask, lapa, image_folder); this run's validation scores are in its "
                        "metrics.csv.")
    if data_root is not None:
        with open_dict(cfg):
            cfg.data.root = str(Path(data_root).expanduser().resolve())
    root = cfg.data.root
    if root is None or str(root) == "???" or not Path(str(root)).expanduser().is_dir():
        raise UserError(
            (f"--data-root {data_root} does not exist. " if data_root is not None else
             f"The data root {root!r} (data.root of {path}) does not exist here (moved, or trained on another "
             "machine). ") + "Pass --data-root DIR, the folder the run trained on (ROOT/train/, ROOT/test/, ...).")


def split_of(data: dict, split: str, cfg, task: str):
    """The dataset of the split; a test/ without labels, or none, is an error naming the fix."""
    root = Path(str(cfg.data.root)).expanduser()
    if split == "val":
        return data["val"]
    layout = (f"test/{cfg.data.get('images_dir', 'images')}/NAME.jpg with test/{cfg.data.get('masks_dir', 'masks')}"
              "/NAME.png" if task == "segmentation" else "test/CLASS/NAME.jpg (one folder per class)")
    if "test" not in data:
        raise UserError(f"--split test: {root} has no test/ folder. Put labelled test images there ({layout}), or "
                        "score the validation split with --split val.")
    if not data["test"].has_targets:
        raise UserError(f"--split test: {root / 'test'} holds images without labels, and a score needs them. Add "
                        f"the labels ({layout}), or score the validation split with --split val.")
    return data["test"]

class Files:
    """Original image files (and masks or labels) as read, for a DataLoader. A bad file comes back as its
    UserError's message (a worker's exception would arrive wrapped in torch's traceback)."""

    def __init__(self, items: list, in_channels: int, decoder: str, num_classes: int, ignore_index: int):
        self.items, self.channels, self.decoder = items, in_channels, decoder
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from project.data import folder
        from project.evaluation.inference import read

        path, target = self.items[i]
        try:
            image = read(path, self.channels, self.decoder)
            if isinstance(target, int):  # a class index
                return image, target, path
            mask = folder.read_mask(target)
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise UserError(f"Mask {target} is {tuple(mask.shape)} pixels but its image {path} is "
                                f"{tuple(image.shape[1:])}; each mask must match its image's size.")
            folder.check_mask(mask, target, self.num_classes, self.ignore_index)
            return image, mask, path
        except UserError as e:
            return str(e)


def batches(items, desc: dict, decoder: str, batch_size: int, workers: int, label: str):
    from torch.utils.data import DataLoader

    from project import progress

    files = Files(items, desc["in_channels"], decoder, len(desc["classes"]), desc["ignore_index"])
    loader = DataLoader(files, batch_size=batch_size, num_workers=workers, collate_fn=list)
    for batch in progress.track(loader, len(loader), label, "batch", leave=False):  # lines in a log
        for item in batch:
            if isinstance(item, str):
                raise UserError(item)
        yield batch


def score_segmentation(model, items, desc: dict, decoder: str, batch_size: int, tta: bool, device, workers: int,
                       label: str) -> dict:
    """Both F-scores at each mask's original size, per class and per image."""
    from project.evaluation.inference import at_size, prepare, probabilities
    from project.evaluation.scorers import SegmentationScorer

    scorer, per_image = SegmentationScorer(len(desc["classes"]), device, desc["ignore_index"]), []
    for batch in batches(items, desc, decoder, batch_size, workers, label):
        probs = probabilities(model, prepare([b[0] for b in batch], desc).to(device), tta,
                              desc["flip_pairs"])
        for (_, mask, path), p in zip(batch, probs):
            mask = mask.to(device)[None]
            p = at_size(p, tuple(mask.shape[1:]))[None]  # resized probabilities, then the argmax
            per_image.append({"file": path.name, "image_f1": scorer.update(p, mask).item()})
    return {"metrics": scorer.scores(), "per_class": scorer.rows(desc["classes"]),
            "confusion_matrix": scorer.matrix.cpu().tolist(), "per_image": per_image}


def score_classification(model, items, desc: dict, decoder: str, batch_size: int, tta: bool, device, workers: int,
                         label: str) -> dict:
    """Accuracy, and precision, recall and F1 per class from one confusion matrix."""
    import torch

    from project.evaluation.inference import prepare, probabilities
    from project.evaluation.scorers import ClassificationScorer
    from project.metrics import class_map

    scorer, per_image = ClassificationScorer(len(desc["classes"]), device), []
    for batch in batches(items, desc, decoder, batch_size, workers, label):
        probs = probabilities(model, prepare([b[0] for b in batch], desc).to(device), tta)
        scorer.update(probs, torch.tensor([b[1] for b in batch], device=probs.device))
        for (_, target, path), predicted in zip(batch, class_map(probs).cpu().tolist()):
            per_image.append({"file": f"{path.parent.name}/{path.name}", "label": desc["classes"][target],
                              "predicted": desc["classes"][predicted], "correct": int(target == predicted)})
    return {"metrics": {"acc": scorer.accuracy()}, "per_class": scorer.rows(desc["classes"]),
            "confusion_matrix": scorer.matrix.cpu().tolist(), "per_image": per_image}


def main_metric(cfg, task: str) -> str:
    """The run's loss.metric for segmentation (dataset_f1 unless it says image_f1), accuracy for classification."""
    if task != "segmentation":
        return "acc"
    metric = str(cfg.get("loss", {}).get("metric", "dataset_f1"))
    return metric if metric in ("dataset_f1", "image_f1") else "dataset_f1"


def score(path: Path, split: str = "val", data_root=None, ema: str = "auto", overrides=(), batch_size=None,
          tta: bool = False, device=None, label: str = "") -> dict:
    """Load the weights, build the split from their config, score it: the result dict (see the module doc)."""
    import torch

    from project import tasks
    from project.data import splits
    from project.checkpoints import loading
    from project.checkpoints.foreign import FORMAT as FOREIGN
    from project.checkpoints.opening import stored_best
    from project.runtime import pick_device

    overrides = list(overrides)
    if data_root is not None:  # a file another script wrote builds its data from the overrides
        root = str(Path(data_root).expanduser().resolve())
        overrides.append(f"data.root={root}" if re.fullmatch(r"[\w/.~+-]+", root) else f"data.root='{root}'")
    model, cfg, saved, path = loading.load(path, overrides=overrides, ema=ema)
    with_data_root(cfg, data_root, path)
    data = tasks.build_data(cfg, augment=False)
    task = data.get("task") or cfg.data.get("task") or "segmentation"
    if task not in ("segmentation", "classification") or data.get("tasks"):
        raise UserError(f"project-evaluate scores segmentation and single-task classification; {path} was trained "
                        f"on {task} data ({cfg.data.get('_target_')}). Its validation scores are in metrics.csv.")
    dataset = split_of(data, split, cfg, task)
    items = getattr(dataset, "pairs", None) or getattr(dataset, "samples", None)
    if items is None:
        raise UserError(f"The {split} split of {cfg.data.get('_target_')} has no image files to read at their "
                        "original size; project-evaluate scores folder data (seg_folder, celebamask, lapa, "
                        "image_folder).")
    desc = loading.model_card(cfg, saved)
    desc["classes"] = list(data.get("classes") or desc["classes"])
    device = pick_device(str(device or "auto"))  # the GPU when there is one (the one device choice)
    model.to(device)
    size = int(desc["image_size"])
    batch_size = int(batch_size or cfg.get("trainer", {}).get("batch_size") or 8)
    scorer = score_segmentation if task == "segmentation" else score_classification
    scores = scorer(model, items, desc, str(cfg.data.get("decoder", "pil")), batch_size, tta, device,
                    int(cfg.data.get("num_workers") or 0), label or f"{split} {path.name}")
    note = splits.differs(saved.get("data_split"), data.get("split")) if split == "val" else None
    monitor = saved.get("monitor")
    trained = (saved.get("val_metrics") or {}).get(monitor) if monitor and ema == "auto" else None
    stored = stored_best(saved) if saved["format"] == FOREIGN else None  # another script's number, read by loss.metric
    return {
        "format": FORMAT, "task": task, "split": split, "checkpoint": label_of(path), "checkpoint_path": str(path),
        "run_dir": str(run_dir_of(path)) if run_dir_of(path) else None, "epoch": saved.get("epoch"),
        "weights": model.weights, "data_root": str(cfg.data.root),
        "split_how": data["split"]["how"] if split == "val" and data.get("split") else f"{split}/",
        "split_note": note, "images": len(items), "tta": "flip" if tta else None, "image_size": size,
        "scored_at": (f"original size: predicted at {size}x{size}, probabilities resized bilinearly to each mask's "
                      "size, then argmax" if task == "segmentation" else f"{size}x{size} (images resized)"),
        "main_metric": main_metric(cfg, task), "metrics": scores["metrics"],
        "definitions": {k: DEFINITIONS[k] for k in scores["metrics"]}, "classes": desc["classes"],
        "per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"],
        "training_val": None if trained is None else {
            "metric": MONITORS.get(monitor, monitor), "value": trained,
            "note": f"training's validation of these weights, at {size}x{size} on resized masks: not this number"
            if task == "segmentation" else "training's validation of these weights"},
        "device": str(device), "per_image": scores["per_image"], "stored_best": stored,
        "epoch_note": epoch_note(saved)}


def epoch_note(saved: dict) -> str | None:
    """Another script's file: its `epoch` is its own count, said so ("" when it stores none); None for ours."""
    from project.checkpoints import foreign

    if saved["format"] != foreign.FORMAT:
        return None
    stored = saved.get("stored_epoch")
    return "" if stored is None else foreign.epoch_words(saved["epoch"], saved.get("history_epochs"))


def atomic_write(path: Path, data: bytes) -> None:
    from project.atomic import write_atomic

    try:
        write_atomic(path, data, fsync=True)
    except OSError as e:
        raise UserError(f"Could not write {path} ({os.strerror(e.errno) if e.errno else e}). Pass --out DIR, a "
                        "folder with space that you can write.") from None


def after_fit(run, summary: dict) -> str | None:
    """trainer.test_after_fit: the validated best weights (best_model.pth) scored once on a labelled test/ at the
    end of training (rank 0): results.json in the run dir, test/<metric> in the tracker's summary; returns the
    final log line. The test split never picks a checkpoint; a test/ that cannot be scored is a warning, not a
    failed run."""
    import logging

    log = logging.getLogger("project.recipe")
    test, best = run.data.get("test"), run.ckpt_dir / "best_model.pth"
    if test is None or not run.cfg.trainer.get("test_after_fit", True):
        return None
    if not getattr(test, "has_targets", False):
        log.info("test/ has no labels: not scored after training (trainer.test_after_fit needs them).")
        return None
    run.writer.wait()  # best_model.pth is on disk
    if not best.is_file():
        return None
    try:
        with trust.accepting("own"):  # the file this run just wrote, from the config it runs
            result = score(best, "test", device=str(run.device), label="test best_model.pth")
        result.pop("per_image")
        result["source"] = "trainer.test_after_fit"
        atomic_write(run.run_dir / "results.json", (json.dumps(plain(result), indent=1) + "\n").encode())
    except Exception as e:  # noqa: BLE001 - the trained run is complete; its test score must not fail it
        log.warning("The test split could not be scored after training (%s: %s). The run's checkpoints are "
                    "complete; score it later with: project-evaluate %s --split test", type(e).__name__, e,
                    run.run_dir)
        return None
    summary.update({f"test/{k}": v for k, v in result["metrics"].items()})
    run.state["tracker"].log_summary(summary)
    main = result["main_metric"]
    others = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if k != main)
    return (f"Test ({result['images']} images, best weights of epoch {result['epoch']}, at the masks' original size"
            if result["task"] == "segmentation" else f"Test ({result['images']} images, best weights of epoch "
            f"{result['epoch']}") + f"): {main} {result['metrics'][main]:.4f}" + (f" ({others})" if others else "") + \
        f"; {run.run_dir / 'results.json'}"
