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
import ast
import os
import shutil
import sys
import time
from pathlib import Path

from project.checkpoints import trust
from project.errors import UserError

COURSE_LIMIT = 1_821_085  # the course benchmark: fewer parameters than this
STANDALONE_IMPORTS = {"torch", "torchvision", "PIL", "numpy"}  # what requirements.txt brings (numpy: torchvision's)
REQUIREMENTS = "torch\ntorchvision\npillow\n"
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

def pick_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    from tqdm import tqdm

    from project.evaluation import inference

    task = info["task"]
    rows = []
    colors = info["colors"] if palette else None
    with tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [inference.read(p, info["in_channels"], decoder) for p in chunk]
            batch = inference.prepare(images, info["image_size"]).to(device)
            probs = inference.probabilities(model, batch, tta, info["flip_pairs"])
            task = task or ("segmentation" if probs.dim() == 4 else "classification")
            for p, image, prob in zip(chunk, images, probs):
                if task == "segmentation":
                    if prob.shape[0] > MAX_MASK_CLASSES:
                        raise UserError(f"The model predicts {prob.shape[0]} classes; a mask PNG holds at most "
                                        f"{MAX_MASK_CLASSES} (one byte per pixel).")
                    mask = inference.at_size(prob, tuple(image.shape[-2:])).argmax(0).to(torch.uint8).cpu().numpy()
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


# ----------------------------------------------------------------------------------------------- the solution

def constructor_args(cfg, model_args: dict) -> dict:
    """The keyword arguments tasks.build_model gave the class: the model config's keys (dropout: null left out)
    and the data's runtime arguments the constructor names, as plain Python values."""
    from omegaconf import OmegaConf

    from project import tasks

    spec = OmegaConf.to_container(cfg.model, resolve=True)
    target = spec.pop("_target_", None)
    if spec.get("dropout", 0) is None:
        del spec["dropout"]
    if spec.get("_args_"):
        raise UserError(f"{target} is built with positional arguments (model._args_), which the stand-alone "
                        "run.py does not reproduce. Give the class keyword arguments.")
    spec = {k: v for k, v in spec.items() if not str(k).startswith("_")}
    takes = tasks.accepted_args(target)
    runtime = {k: v for k, v in dict(model_args).items() if "*" in takes or k in takes}
    args = {**spec, **runtime}

    def plain(value, where):
        if isinstance(value, dict):
            if "_target_" in value:
                raise UserError(f"model.{where} is itself built by Hydra (_target_: {value['_target_']}); the "
                                "stand-alone run.py only passes plain values. Give the class plain arguments.")
            return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise UserError(f"model.{where}={value!r} is not a plain value that run.py can hold.")

    return {k: plain(v, k) for k, v in args.items()}


def model_source(model) -> tuple[Path, str]:
    """The file that defines the model's class, and the module name it gets beside run.py. A module that imports
    anything but the standard library, torch, torchvision, Pillow or numpy cannot stand alone: a UserError."""
    import inspect

    cls = type(model)
    try:
        source = Path(inspect.getsourcefile(cls))
    except (TypeError, OSError):
        source = None
    if source is None or not source.is_file():
        raise UserError(f"The source of {cls.__module__}.{cls.__qualname__} is not a file, so the solution cannot "
                        "carry it. Define the model class in a .py module.")
    if cls.__qualname__ != cls.__name__:
        raise UserError(f"{cls.__module__}.{cls.__qualname__} is defined inside another object; the stand-alone "
                        "run.py imports a module-level class. Define it at the top level of its module.")
    needs = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.level:
            needs.append("." * node.level + (node.module or ""))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            needs += [n for n in names if n.split(".")[0] not in STANDALONE_IMPORTS | set(sys.stdlib_module_names)]
    if needs:
        raise UserError(
            f"The model's source {source} imports {', '.join(sorted(set(needs)))}, which the solution cannot "
            "carry: solution/ holds run.py, ckpt.pth and this one module, and needs only torch, torchvision and "
            "Pillow. Put what the model needs into its own module (one file importing only torch, torchvision, "
            "Pillow, numpy and the standard library), or leave --solution out. Nothing was written.")
    name = cls.__module__.split(".")[-1]
    if name in {"run", "__main__", "torch", "torchvision", "PIL", "numpy"} or name in sys.stdlib_module_names:
        name = "model_def"
    return source, name


RUN_PY = '''"""Stand-alone prediction: one image in, one single-channel PNG of class indices out, at the image's size.

    python3 run.py --input x.jpg --output y.png --weights ckpt.pth

Written by project-predict from {origin}.
Needs only torch, torchvision and Pillow (requirements.txt); the model class is {cls} from {module}.py beside
this file, built with the arguments it was trained with. The image is resized to the training size and
normalised as in training; the class probabilities are resized bilinearly to the image's size, then the argmax
is taken.{tta_words}
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from {module} import {cls}

try:
    from torchvision.transforms.v2.functional import pil_to_tensor, resize
except ImportError:  # torchvision before 0.15
    from torchvision.transforms.functional import pil_to_tensor, resize

MODEL_ARGS = {model_args}
DROPPED_MODULES = {dropped}  # removed from the model by its last training phase
IMAGE_SIZE = {image_size}  # the training image_size: every image is resized to IMAGE_SIZE x IMAGE_SIZE
MEAN, STD = {mean}, {std}  # the training normalisation, each channel: (pixel / 255 - MEAN) / STD
IN_CHANNELS = {in_channels}
DECODER = {decoder!r}  # how training decoded images: pil (Pillow) or torchvision (torchvision.io)
TTA_FLIP = {tta}  # average with the mirror image's prediction, its left/right classes swapped back
FLIP_PAIRS = {flip_pairs}  # class indices a horizontal flip exchanges


def load_model(weights):
    model = {cls}(**MODEL_ARGS)
    for name in DROPPED_MODULES:
        delattr(model, name)
    model.load_state_dict(torch.load(weights, map_location="cpu")["state_dict"])
    return model.eval()


def read(path):
    """uint8 (channels, height, width)"""
    if DECODER == "torchvision":
        from torchvision.io import ImageReadMode, decode_image

        return decode_image(str(path), mode=ImageReadMode.GRAY if IN_CHANNELS == 1 else ImageReadMode.RGB)
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("L" if IN_CHANNELS == 1 else "RGB"))


@torch.no_grad()
def predict(model, image, device):
    """uint8 (channels, height, width) -> uint8 (height, width) class indices"""
    size = tuple(image.shape[-2:])
    x = (resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=True).float() / 255 - MEAN) / STD
    x = x[None].to(device)
    probs = model(x).float().softmax(1)
    if TTA_FLIP:
        mirrored = model(x.flip(-1)).float().softmax(1).flip(-1)
        order = list(range(probs.shape[1]))
        for a, b in FLIP_PAIRS:
            order[a], order[b] = b, a
        probs = (probs + mirrored[:, order]) / 2
    probs = probs[0]
    if tuple(probs.shape[-2:]) != size:
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs.argmax(0).to(torch.uint8).cpu()


def main():
    parser = argparse.ArgumentParser(description="One image in, its mask of class indices out.")
    parser.add_argument("--input", required=True, help="the image (jpg, png, ...)")
    parser.add_argument("--output", required=True, help="the mask PNG to write")
    parser.add_argument("--weights", default=str(Path(__file__).with_name("ckpt.pth")), help="ckpt.pth")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.weights).to(device)
    mask = predict(model, read(args.input), device)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy()).save(args.output)


if __name__ == "__main__":
    main()
'''


def solution_plan(model, cfg, saved: dict) -> dict:
    """What solution/ will hold, checked before anything is predicted: the model's source module (standing alone)
    and its constructor arguments (plain values)."""
    from project import tasks

    source, module = model_source(model)
    model_args = saved.get("model_args") or tasks.build_data(cfg, augment=False)["model_args"]  # load() sets them
    return {"source": source, "module": module, "args": constructor_args(cfg, model_args)}


def write_solution(folder: Path, plan: dict, model, saved: dict, info: dict, tta: bool, origin: str) -> list[str]:
    """solution/: ckpt.pth (the weights predicted with, under state_dict), run.py, the model's module,
    requirements.txt. Returns the file names."""
    import torch

    source, module, args = plan["source"], plan["module"], plan["args"]
    folder.mkdir(parents=True)
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, folder / "ckpt.pth")
    shutil.copyfile(source, folder / f"{module}.py")
    cls = type(model).__name__
    (folder / "run.py").write_text(RUN_PY.format(
        origin=origin, cls=cls, module=module, model_args=repr(args),
        dropped=repr(list(saved.get("dropped_modules") or [])), image_size=int(info["image_size"]),
        mean=info["mean"], std=info["std"], in_channels=int(info["in_channels"]), decoder=info["decoder"],
        tta=bool(tta), flip_pairs=repr([list(map(int, p)) for p in info["flip_pairs"]]),
        tta_words=("\nWith TTA_FLIP the probabilities are first averaged with the mirror image's (its left/right "
                   "classes\nswapped back), as project-predict --tta flip did.") if tta else ""))
    (folder / "requirements.txt").write_text(REQUIREMENTS)
    return sorted(p.name for p in folder.iterdir())


def check_solution(folder: Path, image: Path, mask: Path) -> float:
    """Run solution/run.py as the grader does (a fresh process, no PYTHONPATH, in solution/) on one image: the
    share of its pixels that agree with the mask predicted here."""
    import subprocess
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "check.png"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([sys.executable, "run.py", "--input", str(image.resolve()), "--output", str(output),
                               "--weights", "ckpt.pth"], cwd=folder, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not output.is_file():
            raise UserError(f"solution/run.py fails on {image.name} when run on its own (exit {proc.returncode}): "
                            f"{proc.stderr.strip()[-1500:]}. Nothing was written.")
        got, want = np.array(Image.open(output)), np.array(Image.open(mask))
    if got.shape != want.shape:
        raise UserError(f"solution/run.py wrote a {got.shape} mask for {image.name}, not {want.shape}. Nothing was "
                        "written.")
    return float((got == want).mean())


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


def predict(target, images, out, checkpoint: str = "best", ema: str = "auto", tta: str | None = None,
            palette: bool = False, zip_path=None, solution: bool = False, max_params: int | None = None,
            batch_size: int = 8, overrides: list[str] | None = None, say=print) -> dict:
    """The command as a function: predictions for every image in `images`, written into `out` (and the zip).
    Returns what was written and how. Raises UserError with nothing written."""
    out = Path(out).expanduser()
    zip_path = Path(zip_path).expanduser() if zip_path else None
    if tta not in (None, "none", "flip"):
        raise UserError(f"--tta {tta} is unknown: use --tta flip (the image and its mirror), or leave it out.")
    tta = tta == "flip"
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
    paths, others = image_list(images)
    sizes = image_sizes(paths)

    from project.checkpoints import loading

    model, cfg, saved, ckpt_path = loading.load(target, checkpoint, list(overrides or []), ema=ema)
    info = loading.describe(cfg, saved)
    info["decoder"] = cfg.data.get("decoder", "pil")
    if info["task"] not in (None, "segmentation", "classification"):
        raise UserError(f"{ckpt_path} is a {info['task']} model; project-predict writes masks for segmentation "
                        "and predictions.csv for classification models.")
    if zip_path is not None and info["task"] == "classification":
        raise UserError("--zip packs segmentation masks (masks/ at its root); this is a classification model, "
                        "whose predictions are predictions.csv. Leave --zip and --solution out.")
    n_params = check_size(model, max_params)
    plan = solution_plan(model, cfg, saved) if solution else None
    device = pick_device()
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
            if task != "segmentation":
                raise UserError("--zip packs segmentation masks; this model gave class scores (predictions.csv). "
                                "Leave --zip and --solution out.")
            check_masks(work, paths, sizes)
            solution_dir = None
            if solution:
                solution_dir = made[1].with_name(made[1].name + "-solution")
                made.append(solution_dir)
                result["solution"] = write_solution(solution_dir, plan, model, saved, info, tta, str(ckpt_path))
                result["solution_agreement"] = check_solution(solution_dir, paths[0], work / f"{paths[0].stem}.png")
                if result["solution_agreement"] < 0.99:
                    raise UserError(
                        f"solution/run.py's mask of {paths[0].name} agrees with this prediction on only "
                        f"{result['solution_agreement']:.2%} of its pixels: the stand-alone model is not the one "
                        "predicted with. Nothing was written.")
            result["zip_names"] = write_zip(made[1], work, solution_dir)
            result["zip"] = str(zip_path)
        if out.exists():
            out.rmdir()  # empty (check_out): replaced by the finished folder
        os.replace(work, out)
        if zip_path is not None:
            os.replace(made[1], zip_path)
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
    parser.add_argument("--trust-config", action="store_true",
                        help="build the file's model with the classes its config names, even where this "
                             "installation would use others (docs/trust.md); the log names them")
    args = parser.parse_intermixed_args(argv)
    try:
        with trust.accepting("warn" if args.trust_config else None):
            result = predict(args.target, args.images, args.out, args.checkpoint, args.ema, args.tta, args.palette,
                             args.zip_path, args.solution, args.max_params, args.batch_size, args.overrides)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(describe_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
