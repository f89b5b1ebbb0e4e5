"""project-predict TARGET --images DIR --out DIR [options] [key=value ...]: a trained model's predictions for a
folder of images.

    project-predict outputs/2026-11-27/12-00-00 --images ~/faces/test/images --out masks --tta flip \\
        --zip submission.zip --solution --max-params 1821084

TARGET is a run dir (its checkpoints/best_model.pth, or --checkpoint last|final) or a checkpoint file; a file
another script wrote needs the overrides that describe it (model=custom model._target_=pkg.Net data=celebamask
...). Each image is resized to the training image_size and normalised as in training; the class probabilities
(with --tta flip: the mean of the image's and its mirror's, the mirror's left/right classes swapped back) are
resized bilinearly to the image's own size, then the argmax is taken.

Segmentation: one single-channel PNG of class indices per image (same stem, mode L; mode P with the data's
colours with --palette), at the image's size. Classification: predictions.csv (file, class, the probability of
each class). --zip packs the masks as the benchmark wants them (masks/ at the root); --solution adds solution/
(ckpt.pth, a stand-alone run.py, the model's source module, requirements.txt).
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from project.commands.text import trust_flag, trusting
from project.errors import UserError
from project.evaluation.solution import check_solution, solution_contents, write_solution

COURSE_LIMIT = 1_821_085  # the course benchmark: fewer parameters than this
MAX_MASK_CLASSES = 256  # one byte per pixel


# ----------------------------------------------------------------------------------------------- the inputs

def image_list(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files of `folder` (by extension, sorted by name) and the names of the other files in it."""
    from project.data.folder import IMAGE_EXTS

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder. Pass the folder that holds the images, e.g. "
                        "--images ~/faces/test/images.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTS]
    if not images:
        raise UserError(f"--images {folder} holds no images ({', '.join(IMAGE_EXTS)}). Pass the folder that holds "
                        "them, e.g. --images ~/faces/test/images.")
    stems = {}
    for p in images:
        if p.stem in stems:
            raise UserError(f"{stems[p.stem].name} and {p.name} in {folder} would both give the mask {p.stem}.png. "
                            "Rename or remove one of them.")
        stems[p.stem] = p
    return images, others


def image_sizes(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    """(height, width) of each image from its header, before any prediction: a file that is not an image stops
    the command here, named, with nothing written."""
    from PIL import Image

    sizes = {}
    for p in paths:
        try:
            with Image.open(p) as image:
                sizes[p] = (image.height, image.width)
        except Exception as e:  # noqa: BLE001 - Pillow raises several kinds for a file that is not an image
            raise UserError(f"{p} is not an image that can be read ({type(e).__name__}: {e}). Remove it from the "
                            "folder or replace it with an intact image; nothing was written.") from None
    return sizes


def check_out(out: Path, flag: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file. Give a folder for the predictions.")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{flag} {out} already holds files. Predictions go into a new or empty folder, so that no "
                        "mask of an earlier prediction mixes with these: remove it or choose another folder.")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_size(model, limit: int | None) -> int:
    n = count_parameters(model)
    if limit is not None and n > limit:
        raise UserError(f"The model has {n:,} parameters, over --max-params {limit:,} (by {n - limit:,}). A "
                        f"benchmark with that limit refuses it (the course's: fewer than {COURSE_LIMIT:,}); train a "
                        "smaller model (e.g. fewer channels or layers). Nothing was written.")
    return n


# ----------------------------------------------------------------------------------------------- predicting

def write_mask(mask, path: Path, colors=None) -> None:
    from PIL import Image

    image = Image.fromarray(mask)  # uint8 (H, W): mode L
    if colors is not None:
        image.putpalette([v for c in colors for v in c])  # mode P: the same indices, shown in the data's colours
    image.save(path)


def run_model(model, paths: list[Path], info: dict, out: Path, *, device, tta: bool,
              batch_size: int, palette: bool, decoder: str) -> str:
    """Predict every image in order; masks (or predictions.csv) into `out`. Returns the task it found.

    In full precision whatever trainer.precision trained the model: the masks are then the ones solution/run.py
    computes (bf16 autocast changed up to 0.8% of the pixels of a tiny model's masks on an H200)."""
    import csv

    import numpy as np
    import torch
    from project import progress
    from project.evaluation import inference
    from project.metrics import class_map

    task = info["task"]
    rows = []
    colors = info["colors"] if palette else None
    with progress.bar(len(paths), "predict", "img") as bar:  # a bar on a terminal, plain lines in a log
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [inference.read(p, info["in_channels"], decoder) for p in chunk]
            batch = inference.prepare(images, info).to(device)
            probs = inference.probabilities(model, batch, tta, info["flip_pairs"])
            task = task or ("segmentation" if probs.dim() == 4 else "classification")
            for p, image, prob in zip(chunk, images, probs):
                if task == "segmentation":
                    if prob.shape[0] > MAX_MASK_CLASSES:
                        raise UserError(f"The model predicts {prob.shape[0]} classes; a mask PNG holds at most "
                                        f"{MAX_MASK_CLASSES} (one byte per pixel).")
                    resized = inference.at_size(prob, tuple(image.shape[-2:]))
                    mask = class_map(resized, dim=0).to(torch.uint8).cpu().numpy()
                    write_mask(np.ascontiguousarray(mask), out / f"{p.stem}.png", colors)
                else:
                    rows.append((p.name, prob.cpu().tolist()))
            bar.update(len(chunk))
    if task == "classification":
        classes = info["classes"] or [str(i) for i in range(len(rows[0][1]))]
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "class", *(f"p_{c}" for c in classes)])
            for name, prob in rows:
                writer.writerow([name, classes[max(range(len(prob)), key=prob.__getitem__)],
                                 *(f"{v:.6f}" for v in prob)])
    return task


def check_masks(folder: Path, paths: list[Path], sizes: dict) -> None:
    """What the benchmark checks, before anything is packed: one mask per image, single-channel, at its size."""
    from PIL import Image

    masks = sorted(folder.glob("*.png"))
    if len(masks) != len(paths):
        raise UserError(f"{len(masks)} masks for {len(paths)} images in {folder}: the zip would be refused.")
    for p in paths:
        mask = folder / f"{p.stem}.png"
        with Image.open(mask) as m:
            if m.mode not in ("L", "P") or (m.height, m.width) != sizes[p]:
                raise UserError(f"{mask.name} is a {m.mode} image of {m.width}x{m.height}, but {p.name} is "
                                f"{sizes[p][1]}x{sizes[p][0]}: a mask must be single-channel at its image's size.")


# ----------------------------------------------------------------------------------------------- the zip

def write_zip(path: Path, masks: Path, solution: Path | None) -> list[str]:
    """masks/ (and solution/) at the zip's root, nothing around them; directory entries as `zip -r` writes them."""
    import zipfile

    names = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for folder, prefix in ((masks, "masks/"), (solution, "solution/")):
            if folder is None:
                continue
            z.writestr(prefix, "")
            names.append(prefix)
            for f in sorted(folder.iterdir()):
                z.write(f, prefix + f.name)
                names.append(prefix + f.name)
    return names


# ----------------------------------------------------------------------------------------------- the command

def partial_path(final: Path) -> Path:
    """Where `final` is made before it is renamed into place (same folder, so the rename is atomic)."""
    return final.parent / f".{final.name}.partial-{os.getpid()}"


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def check_arguments(out: Path, zip_path: Path | None, tta, batch_size: int, max_params: int | None, solution: bool,
                    overrides) -> None:
    """The refusals that need nothing loaded."""
    if tta not in (None, "none", "flip"):
        raise UserError(f"--tta {tta} is unknown: use --tta flip (the image and its mirror), or leave it out.")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: predict at least 1 image at a time.")
    if max_params is not None and max_params < 1:
        raise UserError(f"--max-params {max_params}: give the benchmark's limit, e.g. --max-params 1821084.")
    if solution and zip_path is None:
        raise UserError("--solution adds solution/ to the zip: give --zip FILE too (e.g. --zip submission.zip).")
    if zip_path is not None and zip_path.is_dir():
        raise UserError(f"--zip {zip_path} is a folder. Give the zip file to write, e.g. --zip submission.zip.")
    bad = [o for o in overrides or [] if "=" not in o]
    if bad:
        raise UserError(f"{' '.join(bad)}: overrides are key=value (e.g. model=custom data=celebamask); TARGET "
                        "comes first and only once.")
    check_out(out)


def checked_model(target, checkpoint: str, overrides, ema: str, zip_path: Path | None):
    """(model, cfg, saved, checkpoint path, what using it needs); a model that predicts neither masks nor classes,
    or classes with --zip, is refused."""
    from project.checkpoints import loading

    model, cfg, saved, ckpt_path = loading.load(target, checkpoint, list(overrides or []), ema=ema)
    info = loading.model_card(cfg, saved)
    info["decoder"] = cfg.data.get("decoder", "pil")
    if info["task"] not in (None, "segmentation", "classification"):
        raise UserError(f"{ckpt_path} is a {info['task']} model; project-predict writes masks for segmentation "
                        "and predictions.csv for classification models.")
    if zip_path is not None and info["task"] == "classification":
        raise UserError("--zip packs segmentation masks (masks/ at its root); this is a classification model, "
                        "whose predictions are predictions.csv. Leave --zip and --solution out.")
    return model, cfg, saved, ckpt_path, info


def pack(result: dict, made: list[Path], work: Path, paths: list[Path], sizes: dict, plan: dict | None, model,
         saved: dict, info: dict, tta: bool) -> None:
    """The zip (made[1]): the masks checked as the benchmark checks them, and with a plan, solution/ written and
    its run.py run alone on the first image, which must agree with the mask predicted here."""
    if result["task"] != "segmentation":
        raise UserError("--zip packs segmentation masks; this model gave class scores (predictions.csv). "
                        "Leave --zip and --solution out.")
    check_masks(work, paths, sizes)
    solution_dir = None
    if plan is not None:
        solution_dir = made[1].with_name(made[1].name + "-solution")
        made.append(solution_dir)  # removed with the other partial files
        result["solution"] = write_solution(solution_dir, plan, model, saved, info, tta, result["checkpoint"])
        result["solution_agreement"] = check_solution(solution_dir, paths[0], work / f"{paths[0].stem}.png")
        if result["solution_agreement"] < 0.99:
            raise UserError(
                f"solution/run.py's mask of {paths[0].name} agrees with this prediction on only "
                f"{result['solution_agreement']:.2%} of its pixels: the stand-alone model is not the one "
                "predicted with. Nothing was written.")
    result["zip_names"] = write_zip(made[1], work, solution_dir)


def predict(target, images, out, checkpoint: str = "best", ema: str = "auto", tta: str | None = None,
            palette: bool = False, zip_path=None, solution: bool = False, max_params: int | None = None,
            batch_size: int = 8, overrides: list[str] | None = None, say=print) -> dict:
    """The command as a function: predictions for every image in `images`, written into `out` (and the zip).
    Returns what was written and how. Raises UserError with nothing written."""
    out = Path(out).expanduser()
    zip_path = Path(zip_path).expanduser() if zip_path else None
    check_arguments(out, zip_path, tta, batch_size, max_params, solution, overrides)
    tta = tta == "flip"
    paths, others = image_list(images)
    sizes = image_sizes(paths)
    model, cfg, saved, ckpt_path, info = checked_model(target, checkpoint, overrides, ema, zip_path)
    n_params = check_size(model, max_params)
    plan = solution_contents(model, cfg, saved) if solution else None
    from project.runtime import pick_device

    device = pick_device("auto")  # the GPU when there is one
    model.to(device)

    made = [partial_path(out)] + ([partial_path(zip_path)] if zip_path else [])
    work = made[0]
    try:
        for p in made:
            p.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        started = time.perf_counter()
        task = run_model(model, paths, info, work, device=device, tta=tta,
                         batch_size=batch_size, palette=palette, decoder=info["decoder"])
        seconds = time.perf_counter() - started
        result = {"task": task, "images": len(paths), "out": str(out), "checkpoint": str(ckpt_path),
                  "weights": getattr(model, "weights", "model"), "tta": "flip" if tta else None,
                  "parameters": n_params, "device": str(device), "seconds": seconds,
                  "images_per_s": len(paths) / seconds if seconds > 0 else float("inf")}
        if zip_path is not None:
            pack(result, made, work, paths, sizes, plan, model, saved, info, tta)
            result["zip"] = str(zip_path)
        from project.atomic import publish

        if out.exists():
            out.rmdir()  # empty (check_out): replaced by the finished folder
        publish(work, out)
        if zip_path is not None:
            publish(made[1], zip_path)
    finally:
        for p in made:
            remove(p)
    result["skipped"] = others
    return result


def describe_result(r: dict) -> str:
    what = (f"{r['images']} masks" if r["task"] == "segmentation" else f"predictions.csv ({r['images']} images)")
    lines = [f"Wrote {what} to {r['out']} in {r['seconds']:.1f} s ({r['images_per_s']:.1f} images/s on "
             f"{r['device']}): {r['checkpoint']}, {'EMA' if r['weights'] == 'ema' else 'model'} weights, "
             f"{r['parameters']:,} parameters, TTA {r['tta'] or 'off'}"]
    if r.get("zip"):
        n = sum(1 for name in r["zip_names"] if name.startswith("masks/") and not name.endswith("/"))
        lines.append(f"Wrote {r['zip']}: masks/ ({n} masks, each single-channel at its image's size)"
                     + (f", solution/ ({', '.join(r['solution'])}; its run.py, run alone on the first image, "
                        f"agrees on {r['solution_agreement']:.2%} of the pixels)" if r.get("solution") else ""))
    if r["skipped"]:
        shown = ", ".join(r["skipped"][:5]) + (f" and {len(r['skipped']) - 5} more" if len(r["skipped"]) > 5 else "")
        n = len(r["skipped"])
        lines.append(f"Skipped {n} file{'s' if n > 1 else ''} not an image by {'their' if n > 1 else 'its'} "
                     f"extension: {shown}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-predict", description=__doc__.split("\n\n")[0],
                                     epilog="Example: project-predict outputs/2026-11-27/12-00-00 --images "
                                            "~/faces/test/images --out masks --tta flip --zip submission.zip "
                                            "--solution --max-params 1821084")
    parser.add_argument("target", help="a run dir or a checkpoint file (.pth, .safetensors)")
    parser.add_argument("overrides", nargs="*", help="config overrides for a file another script wrote "
                        "(model=custom model._target_=pkg.Net data=celebamask ...)")
    parser.add_argument("--images", required=True, help="the folder of images to predict")
    parser.add_argument("--out", required=True, help="a new (or empty) folder for the masks or predictions.csv")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last", "final"],
                        help="which checkpoint of a run dir (default: best)")
    parser.add_argument("--ema", default="auto", choices=["auto", "on", "off"],
                        help="auto: the weights that were validated (default); on: the EMA copy; off: the raw weights")
    parser.add_argument("--tta", choices=["flip"], help="flip: average with the mirror image (left/right classes "
                        "swapped back)")
    parser.add_argument("--palette", action="store_true", help="mode P masks in the data's colours (same indices)")
    parser.add_argument("--zip", dest="zip_path", metavar="FILE", help="also pack the masks as masks/ in this zip")
    parser.add_argument("--solution", action="store_true", help="add solution/ (ckpt.pth, run.py, the model's "
                        "module, requirements.txt) to the zip")
    parser.add_argument("--max-params", type=int, metavar="N", help="refuse a model with more than N parameters "
                        f"(the course: fewer than {COURSE_LIMIT:,}, so 1821084)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    trust_flag(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        with trusting(args):
            result = predict(args.target, args.images, args.out, args.checkpoint, args.ema, args.tta, args.palette,
                             args.zip_path, args.solution, args.max_params, args.batch_size, args.overrides)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(describe_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
