"""project-evaluate TARGET [--split val|test] [--data-root DIR] [--checkpoint best|last|final] [--ema auto|on|off]
[--out DIR] [--batch-size N] [--tta flip] [key=value ...]: score any weights on any split.

    project-evaluate outputs/2026-11-27/12-00-00                     # the run's best weights on its own val split
    project-evaluate outputs/2026-11-27/12-00-00 --split test        # ... on ROOT/test/ (which must have labels)
    project-evaluate multirun/2026-11-27/12-00-00 --split test       # every job's best: a column of comparison.md
    project-evaluate their_best_model.pth model=custom model._target_=pkg.Net data=celebamask --data-root ~/faces

TARGET is a run dir, one of its checkpoints, a file another script wrote (with the model=... data=... overrides
that build its model), or a sweep dir (every job's weights, each with its own config). The data is built from
the checkpoint's config without augmentation, data.root replaced by --data-root: `val` is the split the run
validated on (recorded in the run; a different one is reported), `test` is ROOT/test/ and needs labels.

Segmentation is scored at each mask's ORIGINAL size: predicted at data.image_size, the probabilities resized
bilinearly to the mask's size, then argmax. Both F-scores are reported by name, the run's loss.metric marked as
the main one; they are different numbers and must never be compared as one:
  dataset_f1  one confusion matrix over the split, the mean F1 over the foreground classes (papers); with it
              mIoU and pixel accuracy
  image_f1    per image, the mean F1 over the classes in its ground truth (background included), then the mean
              over images (the face-parsing course benchmark)
Classification: accuracy, and precision and recall per class.

Writes eval/<split>-<checkpoint>.json (scores, per-class table, confusion matrix), <split>-<checkpoint>-images.csv
(per image) and <split>-<checkpoint>-confusion.png (row-normalised) into the run dir, or into --out (required
while the run is still training, or when its dir is read-only). A sweep's comparison.md gets the score as a
column. The test split never picks a checkpoint.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys
from pathlib import Path

from project.errors import UserError
from project.rundirs.reading import fail, fmt, plain

FORMAT = "project-evaluation-v1"
SPLITS = ("val", "test")
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
SHORT = {"dataset_f1": "mean foreground F1 of one confusion matrix (papers)",
         "image_f1": "mean over images of each image's F1 over its classes, background included (benchmark)",
         "miou": "mean IoU of one confusion matrix, background included",
         "pixel_acc": "labelled pixels predicted right", "acc": "images predicted right"}
MONITORS = {"f_score": "dataset_f1", "image_f_score": "image_f1"}  # training's names for the same definitions


# ---- what to score ----

def targets(target, checkpoint: str = "best") -> tuple[bool, list[tuple[str | None, Path]]]:
    """(is a sweep, [(job name or None, checkpoint file)]): one file for a run dir or a file, each job's for a
    sweep dir (the jobs without that checkpoint, failed ones, are left out)."""
    from project.commands.compare import job_order
    from project.checkpoints.loading import FILES, checkpoint_path

    path = Path(target).expanduser()
    if not path.exists():
        raise UserError(f"{str(target)!r} does not exist. Pass a run dir (outputs/<date>/<time>), a checkpoint "
                        "(.pth, .safetensors) or a sweep dir (multirun/<date>/<time>).")
    if path.is_file() or (path / "checkpoints").is_dir() or (path / "metrics.csv").is_file():
        return False, [(None, checkpoint_path(path, checkpoint))]
    if checkpoint not in FILES:
        raise UserError(f"--checkpoint {checkpoint} is unknown: use best, last or final (or pass a .pth file).")
    found = sorted({p.parent.parent for p in path.rglob(f"checkpoints/{FILES[checkpoint]}")
                    if "wandb" not in p.parts}, key=job_order)
    if not found:
        checkpoint_path(path, checkpoint)  # raises: neither a run dir nor a sweep with such files
    return True, [(str(p.relative_to(path)), p / "checkpoints" / FILES[checkpoint]) for p in found]


def run_dir_of(path: Path) -> Path | None:
    return path.parent.parent if path.parent.name == "checkpoints" else None


def label_of(path: Path) -> str:
    """best, last, final for our files; the file's stem for others."""
    from project.checkpoints.loading import FILES

    return {v: k for k, v in FILES.items()}.get(path.name, path.stem)


def output_dir(path: Path, out, job: str | None) -> Path:
    """Where the files go: --out (one folder per job of a sweep), else the run dir's eval/ (the file's folder for
    a checkpoint outside a run dir). Decided before scoring, so a refusal costs no time."""
    from project.rundirs import lock as rundir

    if out:
        return Path(out).expanduser() / job if job else Path(out).expanduser()
    run_dir = run_dir_of(path)
    where = run_dir or path.parent
    if run_dir is not None and rundir.is_locked(run_dir):
        raise UserError(f"{run_dir} is still training ({rundir.describe(rundir.holder(run_dir))} holds it), and "
                        "nothing else writes into a live run's dir. Pass --out DIR for the results (or wait until "
                        "it has finished).")
    if not os.access(where, os.W_OK):
        raise UserError(f"{where} cannot be written (read-only, or not yours), so the results cannot go to "
                        f"{where / 'eval'}. Pass --out DIR, a folder you can write.")
    return where / "eval"


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


# ---- scoring ----

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
    from tqdm import tqdm

    files = Files(items, desc["in_channels"], decoder, len(desc["classes"]), desc["ignore_index"])
    loader = DataLoader(files, batch_size=batch_size, num_workers=workers, collate_fn=list)
    for batch in tqdm(loader, desc=label, unit="batch", disable=None, leave=False, dynamic_ncols=True):
        for item in batch:
            if isinstance(item, str):
                raise UserError(item)
        yield batch


def score_segmentation(model, items, desc: dict, decoder: str, batch_size: int, tta: bool, device, workers: int,
                       label: str) -> dict:
    """Both F-scores at each mask's original size, per class and per image."""
    import torch

    from project.metrics import ConfusionMatrix, image_f1
    from project.evaluation.inference import at_size, prepare, probabilities

    n, ignore = len(desc["classes"]), desc["ignore_index"]
    confusion, per_image = ConfusionMatrix(n, device, ignore), []
    for batch in batches(items, desc, decoder, batch_size, workers, label):
        probs = probabilities(model, prepare([b[0] for b in batch], desc["image_size"]).to(device), tta,
                              desc["flip_pairs"])
        for (_, mask, path), p in zip(batch, probs):
            mask = mask.to(device)[None]
            p = at_size(p, tuple(mask.shape[1:]))[None]  # resized probabilities, then the argmax
            confusion.update(p, mask)
            per_image.append({"file": path.name, "image_f1": image_f1(p.argmax(1), mask, n, ignore).item()})
    per_class = confusion.per_class()
    iou = torch.tensor(per_class["iou"], dtype=torch.float64)
    summary = confusion.compute()
    pixels = confusion.matrix.sum(1).cpu().tolist()
    return {
        "metrics": {"dataset_f1": summary["f_score"],
                    "image_f1": math.fsum(r["image_f1"] for r in per_image) / max(len(per_image), 1),
                    "miou": iou.nanmean().item() if not iou.isnan().all() else math.nan,
                    "pixel_acc": summary["pixel_acc"]},
        "per_class": [{"class": name, "f1": f1, "iou": i, "pixels": int(px)} for name, f1, i, px in
                      zip(desc["classes"], per_class["f1"], per_class["iou"], pixels)],
        "confusion_matrix": confusion.matrix.cpu().tolist(), "per_image": per_image}


def score_classification(model, items, desc: dict, decoder: str, batch_size: int, tta: bool, device, workers: int,
                         label: str) -> dict:
    """Accuracy, and precision, recall and F1 per class from one confusion matrix."""
    import torch

    from project.evaluation.inference import prepare

    n = len(desc["classes"])
    confusion, per_image = torch.zeros(n, n, dtype=torch.long), []
    for batch in batches(items, desc, decoder, batch_size, workers, label):
        images = prepare([b[0] for b in batch], desc["image_size"]).to(device)
        with torch.no_grad():
            probs = model(images).float().softmax(1)
            if tta:  # the mirror's class probabilities: nothing to flip back
                probs = (probs + model(images.flip(-1)).float().softmax(1)) / 2
        for (_, target, path), predicted in zip(batch, probs.argmax(1).cpu().tolist()):
            confusion[target, predicted] += 1
            per_image.append({"file": f"{path.parent.name}/{path.name}", "label": desc["classes"][target],
                              "predicted": desc["classes"][predicted], "correct": int(target == predicted)})
    m = confusion.double()
    tp = m.diag()
    precision = torch.where(m.sum(0) > 0, tp / m.sum(0).clamp(min=1), torch.nan)
    recall = torch.where(m.sum(1) > 0, tp / m.sum(1).clamp(min=1), torch.nan)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.nan)
    return {"metrics": {"acc": (tp.sum() / m.sum().clamp(min=1)).item()},
            "per_class": [{"class": name, "precision": p, "recall": r, "f1": f, "images": int(k)} for name, p, r, f, k
                          in zip(desc["classes"], precision.tolist(), recall.tolist(), f1.tolist(),
                                 m.sum(1).tolist())],
            "confusion_matrix": confusion.tolist(), "per_image": per_image}


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
    desc = loading.describe(cfg, saved)
    desc["classes"] = list(data.get("classes") or desc["classes"])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    size = int(desc["image_size"])
    batch_size = int(batch_size or cfg.get("trainer", {}).get("batch_size") or 8)
    scorer = score_segmentation if task == "segmentation" else score_classification
    scores = scorer(model, items, desc, str(cfg.data.get("decoder", "pil")), batch_size, tta, device,
                    int(cfg.data.get("num_workers") or 0), label or f"{split} {path.name}")
    note = splits.differs(saved.get("data_split"), data.get("split")) if split == "val" else None
    monitor = saved.get("monitor")
    trained = (saved.get("val_metrics") or {}).get(monitor) if monitor and ema == "auto" else None
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
        "device": str(device), "per_image": scores["per_image"]}


# ---- output ----

def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"Could not write {path} ({os.strerror(e.errno) if e.errno else e}). Pass --out DIR, a "
                        "folder with space that you can write.") from None


def confusion_png(result: dict, path: Path) -> None:
    """The confusion matrix, each row (a true class) divided by its count, with the class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array(result["confusion_matrix"], dtype=np.float64)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    names, n = result["classes"], len(result["classes"])
    side = min(max(4.5, 0.45 * n + 2.5), 14)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's " + (
        "pixels" if result["task"] == "segmentation" else "images"))
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if m[i].sum() and rows[i, j] >= 0.005:
                    ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7 if n > 10 else 9,
                            color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), names, rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    main = result["main_metric"]
    ax.set_title(f"{result['split']} split, {result['checkpoint']} weights: {main} "
                 f"{fmt(result['metrics'][main])}" + (" (original size)" if result["task"] == "segmentation" else ""),
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def write(result: dict, out_dir: Path) -> dict:
    """eval/<split>-<checkpoint>.json, -images.csv and -confusion.png, each written atomically; the JSON last."""
    stem = f"{result['split']}-{result['checkpoint']}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Could not create {out_dir} ({os.strerror(e.errno) if e.errno else e}). Pass --out DIR, a "
                        "folder you can write.") from None
    files = {"json": out_dir / f"{stem}.json", "images_csv": out_dir / f"{stem}-images.csv",
             "confusion_png": out_dir / f"{stem}-confusion.png"}
    rows = result["per_image"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["file"])
    writer.writeheader()
    writer.writerows({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    atomic_write(files["images_csv"], text.getvalue().encode())
    confusion_png(result, files["confusion_png"])
    result["files"] = {k: str(v) for k, v in files.items()}
    saved = {k: v for k, v in result.items() if k != "per_image"}  # per image: the CSV
    atomic_write(files["json"], (json.dumps(plain(saved), indent=1) + "\n").encode())
    return result["files"]


def per_class_table(result: dict) -> list[str]:
    columns = ["f1", "iou", "pixels"] if result["task"] == "segmentation" else ["precision", "recall", "f1",
                                                                                "images"]
    rows = [["class", *columns]] + [[r["class"], *(fmt(r[c]) if isinstance(r[c], float) else str(r[c])
                                                   for c in columns)] for r in result["per_class"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def report(result: dict) -> str:
    """What the console shows: the weights and the split, how it was scored, the metrics, the per-class table."""
    weights = {"ema": "EMA weights", "model": "weights"}.get(result["weights"], f"weights ({result['weights']})")
    epoch = f"epoch {result['epoch']}, " if result.get("epoch") is not None else ""
    lines = [f"{result['checkpoint_path']} ({epoch}{weights}) on the {result['split']} split: {result['images']} "
             f"images of {result['data_root']} ({result['split_how']})"]
    if result.get("split_note"):
        lines.append(f"  Note: {result['split_note']}.")
    lines.append(f"  Scored at {result['scored_at']}; {'flip TTA' if result['tta'] else 'no TTA'}.")
    width = max(map(len, result["metrics"]))
    for name, value in result["metrics"].items():
        main = "  <- main (loss.metric)" if name == result["main_metric"] and len(result["metrics"]) > 1 else ""
        lines.append(f"  {name.ljust(width)}  {fmt(value)}  {SHORT[name]}{main}")
    if result.get("training_val"):
        t = result["training_val"]
        size = result["image_size"]
        lines.append("  (training validated these weights on its val split" + (
            f" at {size}x{size}, masks resized: {t['metric']} {fmt(t['value'])}; another measurement)"
            if result["task"] == "segmentation" else f": {t['metric']} {fmt(t['value'])})"))
    lines.append("  Per class:")
    lines += ["  " + line for line in per_class_table(result)]
    return "\n".join(lines)


def evaluate(target, split: str = "val", data_root=None, checkpoint: str = "best", ema: str = "auto", out=None,
             batch_size=None, tta=None, overrides=(), device=None, echo=print) -> dict:
    """Score TARGET (a run dir, a checkpoint, a sweep dir); write the files; for a sweep, comparison.md with the
    score as a column. {"results": [result, ...], "comparison": compare's result or None}."""
    if split not in SPLITS:
        raise UserError(f"--split {split} is unknown: use val (the run's validation split) or test (ROOT/test/, "
                        "with labels).")
    if tta not in (None, "flip"):
        raise UserError(f"--tta {tta} is unknown: use --tta flip (the mean of the image's and its mirror's "
                        "probabilities, paired classes swapped back), or leave it out.")
    if batch_size is not None and int(batch_size) < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"{bad[0]!r} is not a key=value override (e.g. data.num_workers=0, or model=custom for a "
                        "file another script wrote).")
    sweep, found = targets(target, checkpoint)
    where = [output_dir(path, out, job) for job, path in found]  # refusals before any scoring
    results = []
    for (job, path), out_dir in zip(found, where):
        try:
            result = score(path, split, data_root, ema, overrides, batch_size, tta == "flip", device,
                           label=f"{split} {job or path.name}")
        except UserError as e:
            raise UserError(f"{path}: {e}" if sweep else str(e)) from None
        write(result, out_dir)
        results.append(result)
        echo(report(result))
        echo("  wrote " + ", ".join(result["files"].values()) + "\n")
    comparison = None
    if sweep:
        from project.commands import compare

        evals = {Path(r["run_dir"]).resolve(): [r] for r in results if r["run_dir"]}
        comparison = compare.compare([str(target)], out, evals=evals)
        echo(Path(comparison["files"]["markdown"]).read_text().rstrip())
        echo("\nwrote " + ", ".join(comparison["files"].values()))
    return {"results": results, "comparison": comparison}


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("target", help="a run dir, a checkpoint file, or a sweep dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (model=... data=... for a file another script wrote)")
    parser.add_argument("--split", default="val", help="val (the run's validation split, default) or test")
    parser.add_argument("--data-root", help="the data folder, when it is not where the run had it")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or final (for a run or sweep dir)")
    parser.add_argument("--ema", default="auto", help="auto (the validated weights, default), on or off")
    parser.add_argument("--out", help="folder for the results (default: <run dir>/eval/)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's)")
    parser.add_argument("--tta", help="flip: average with the mirrored image's prediction")
    args = parser.parse_intermixed_args(argv)
    try:
        evaluate(args.target, args.split, args.data_root, args.checkpoint, args.ema, args.out, args.batch_size,
                 args.tta, args.overrides)
    except UserError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
