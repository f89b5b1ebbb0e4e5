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
import os
import sys
from pathlib import Path

from project.errors import UserError
from project.commands.text import fail, fmt, plain, trust_flag, trusting
from project.evaluation.scoring import atomic_write, run_dir_of, score

SPLITS = ("val", "test")
SHORT = {"dataset_f1": "mean foreground F1 of one confusion matrix (papers)",
         "image_f1": "mean over images of each image's F1 over its classes, background included (benchmark)",
         "miou": "mean IoU of one confusion matrix, background included",
         "pixel_acc": "labelled pixels predicted right", "acc": "images predicted right"}


# ---- what to score ----

def targets(target, checkpoint: str = "best") -> tuple[bool, list[tuple[str | None, Path]]]:
    """(is a sweep, [(job name or None, checkpoint file)]): one file for a run dir or a file, each job's for a
    sweep dir (the jobs without that checkpoint, failed ones, are left out); checkpoints/resolve.py's table."""
    from project.rundirs.discovery import job_order
    from project.checkpoints import resolve

    path = Path(target).expanduser()
    if not path.exists():
        raise UserError(f"{str(target)!r} does not exist. Pass a run dir (outputs/<date>/<time>), a checkpoint "
                        "(.pth, .safetensors) or a sweep dir (multirun/<date>/<time>).")
    if path.is_file() or (path / "checkpoints").is_dir() or (path / "metrics.csv").is_file():
        return False, [(None, resolve.checkpoint_file(path, "evaluate", checkpoint))]
    found = sorted(resolve.in_sweep(path, checkpoint), key=job_order)
    if not found:
        resolve.checkpoint_file(path, "evaluate", checkpoint)  # raises: neither a run dir nor a sweep with such files
    return True, [(str(p.relative_to(path)), p / "checkpoints" / resolve.FILES[checkpoint]) for p in found]


def output_dir(path: Path, out, job: str | None) -> Path:
    """Where the files go: --out (one folder per job of a sweep), else the run dir's eval/ (the file's folder for
    a checkpoint outside a run dir). Decided before scoring, so a refusal costs no time."""
    from project.rundirs import lock as rundir

    if out:
        return Path(out).expanduser() / job if job else Path(out).expanduser()
    run_dir = run_dir_of(path)
    where = run_dir or path.parent
    if run_dir is not None and rundir.is_locked(run_dir):
        raise UserError(f"{run_dir} is still training ({rundir.holder_summary(rundir.holder(run_dir))} holds it), and "
                        "nothing else writes into a live run's dir. Pass --out DIR for the results (or wait until "
                        "it has finished).")
    if not os.access(where, os.W_OK):
        raise UserError(f"{where} cannot be written (read-only, or not yours), so the results cannot go to "
                        f"{where / 'eval'}. Pass --out DIR, a folder you can write.")
    return where / "eval"


# ---- output ----

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
    if result.get("epoch_note") is not None:  # another script's file: its own epoch count, if it stores one
        epoch = f"{result['epoch_note']}, " if result["epoch_note"] else ""
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
    stored = result.get("stored_best")
    if stored and stored["score"] is not None:
        lines.append(f"  (the file stores {stored['name']} {fmt(stored['score'])}: computed by another script, another "
                     "measurement)")
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
    trust_flag(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        with trusting(args):
            evaluate(args.target, args.split, args.data_root, args.checkpoint, args.ema, args.out, args.batch_size,
                     args.tta, args.overrides)
    except UserError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
