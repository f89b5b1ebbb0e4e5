"""The stand-alone solution project-predict --solution adds to the zip: solution/ holds ckpt.pth (the weights
under state_dict), run.py (one image in, its mask out), the model's source module and requirements.txt, and needs
only torch, torchvision and Pillow. Checked by running its run.py the way a grader does.
"""
import ast
import os
import re
import shutil
import sys
from pathlib import Path

from project.errors import UserError

STANDALONE_IMPORTS = {"torch", "torchvision", "PIL", "numpy"}  # what requirements.txt brings (numpy: torchvision's)
REQUIREMENTS = "torch\ntorchvision\npillow\n"


def constructor_args(cfg, model_args: dict) -> dict:
    """The keyword arguments tasks.build_model gave the class (tasks.model_kwargs), as plain Python values."""
    from project import tasks

    kwargs = tasks.model_kwargs(cfg, model_args)
    if kwargs.config.get("_args_"):
        raise UserError(f"{kwargs.target} is built with positional arguments (model._args_), which the stand-alone "
                        "run.py does not reproduce. Give the class keyword arguments.")
    args = kwargs.keywords()

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


SCRIPT = "solution_run.py"  # this package's stand-alone run.py, copied into solution/ with its settings filled in


def render(settings: dict) -> str:
    """The stand-alone script (SCRIPT) with each setting's line (`NAME = value  # comment`, or `A, B = a, b` for a
    tuple of names) holding the value given, its comment kept."""
    from importlib import resources

    from project.data.normalisation import to_input

    text = resources.files(__package__).joinpath(SCRIPT).read_text()
    for names, value in settings.items():
        values = value if ", " in names else (value,)
        line = re.compile(rf"^{re.escape(names)} = .*?(  # .*)?$", re.M)
        text, found = line.subn(lambda m: f"{names} = {', '.join(map(repr, values))}{m.group(1) or ''}", text,
                                count=1)
        if not found:
            raise RuntimeError(f"{SCRIPT} has no line {names} = ... to fill in")  # the shipped file is broken
    return with_function(text, to_input)


def with_function(text: str, function) -> str:
    """The script with its definition of `function`'s name replaced by the library's own source: the solution
    prepares images with the very function training used, never a copy that may have drifted."""
    import inspect

    lines = text.splitlines(keepends=True)
    found = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == function.__name__]
    if not found:
        raise RuntimeError(f"{SCRIPT} has no def {function.__name__}(...) to fill in")  # the shipped file is broken
    start = found[0].lineno - 1
    return "".join(lines[:start]) + inspect.getsource(function) + "".join(lines[found[0].end_lineno:])


def solution_contents(model, cfg, saved: dict) -> dict:
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
    (folder / "run.py").write_text(render({
        "SOURCE": origin, "MODEL": (module, type(model).__name__), "MODEL_ARGS": args,
        "DROPPED_MODULES": list(saved.get("dropped_modules") or []), "IMAGE_SIZE": int(info["image_size"]),
        "MEAN, STD": (info["mean"], info["std"]), "IN_CHANNELS": int(info["in_channels"]),
        "DECODER": info["decoder"], "TTA_FLIP": bool(tta),
        "FLIP_PAIRS": [list(map(int, p)) for p in info["flip_pairs"]]}))
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
