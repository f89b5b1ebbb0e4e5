"""export TARGET --format safetensors|pt2|onnx --out DIR: a trained model as a file other programs load.

    project-export outputs/2026-11-27/12-00-00 --format onnx --out exported/      # best_model.pth's validated weights
    python -m project.commands.export their_best_model.pth --format safetensors --out exported/ \\
        model=custom model._target_=pkg.Net data=celebamask                     # a file another script wrote

Formats (one model file in DIR, plus config.json with what using it needs):
  safetensors  model.safetensors: the weights (safetensors.torch.save_file); the architecture is config.json's
               `model` (_target_ and constructor arguments) and `model_args`: build_from_config(config) rebuilds it
  pt2          model.pt2: torch.export.export + torch.export.save; torch.export.load(path).module() runs it
  onnx         model.onnx: torch.onnx.export (the torch.export-based exporter; needs the export extra:
               pip install -e '.[export]'); batch dimension dynamic; onnxruntime runs it

Every export is checked before it is moved into DIR: the written file is loaded back (safetensors into a model
built afresh from config.json, torch.export.load, an onnxruntime InferenceSession) and run on a random image
normalised as in training, against the eager model: TOLERANCES below, and the argmax over classes must agree
wherever the eager model's top two classes are further apart than the tolerance. pt2 and onnx are traced at batch
2 and checked at batches 1 and 3, which proves the dynamic batch dimension. Files are written to a temporary folder
inside DIR and renamed into place only after the check passed: a failed export leaves DIR as it was.

Exit status: 0 written and checked; 2 bad input (one paragraph naming the value and the fix); 1 the model cannot be
exported in that format, or the written file does not reproduce the model (nothing written).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from project.commands.text import fail, trust_flag, trusting
from project.checkpoints import trust
from project.errors import UserError

FILES = {"safetensors": "model.safetensors", "pt2": "model.pt2", "onnx": "model.onnx"}
# (rtol, atol) between the reloaded export and the eager model, float32 on the CPU. safetensors: the same eager
# code on the same weights, so bit for bit; pt2: the same aten kernels (a decomposition may reorder a sum);
# onnx: onnxruntime's own kernels (measured differences on the tiny models are ~1e-7).
TOLERANCES = {"safetensors": (0.0, 0.0), "pt2": (1e-5, 1e-6), "onnx": (1e-4, 1e-5)}
TRACE_BATCH, CHECK_BATCHES = 2, (1, 3)
ONNX_EXTRA = ("onnx", "onnxscript", "onnxruntime")


class ExportFailed(Exception):
    """The model cannot be exported in this format, or the written file does not reproduce it (exit 1)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("target", help="a run directory (its checkpoints/<--checkpoint> file) or a checkpoint file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. for a file another script wrote: model=custom "
                             "model._target_=pkg.Net data=celebamask")
    parser.add_argument("--format", required=True, metavar="safetensors|pt2|onnx")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write into (created if needed)")
    parser.add_argument("--checkpoint", default="best", metavar="best|last|final",
                        help="which file of a run directory (default: best)")
    parser.add_argument("--ema", default="auto", metavar="auto|on|off",
                        help="auto: the weights the run validated with (the EMA copy under trainer.ema.validate); "
                             "on / off: the EMA copy or the raw training weights")
    trust_flag(parser)
    args = parser.parse_intermixed_args(argv)  # key=value may come before or after the options
    try:
        with trusting(args):
            written = export(args.target, args.format, args.out, checkpoint=args.checkpoint, ema=args.ema,
                             overrides=args.overrides)
    except UserError as e:
        return fail(e)
    except ExportFailed as e:
        fail(e)
        return 1
    print(report(written))
    return 0


def check_arguments(fmt: str, out: Path, overrides: list[str], ema: str) -> None:
    """Before anything is loaded: the format, the folder and the overrides."""
    if fmt not in FILES:
        raise UserError(f"--format {fmt} is unknown: use safetensors (weights + config.json), pt2 (torch.export) "
                        "or onnx.")
    if ema not in ("auto", "on", "off"):
        raise UserError(f"--ema {ema} is unknown: use auto (the weights the run validated with), on (the EMA copy) "
                        "or off (the raw training weights).")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder. Pass a folder to write {FILES[fmt]} and config.json "
                        "into (it is created if needed).")
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise UserError(f"{' '.join(bad)}: overrides are key=value (e.g. model=custom model._target_=pkg.Net "
                        "data.image_size=256); options come before them as --format, --out, --checkpoint, --ema.")
    if fmt == "onnx":
        import importlib.util

        missing = [name for name in ONNX_EXTRA if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                            "not installed. Install the export extra: pip install -e '.[export]' (or pip install "
                            "onnx onnxscript onnxruntime), or use --format pt2 or safetensors.")


def export(target, fmt: str, out, checkpoint: str = "best", ema: str = "auto", overrides: list[str] | None = None
           ) -> dict:
    """Write and check one export; returns what was written and how it compared (see report)."""
    out, overrides = Path(out).expanduser(), list(overrides or [])
    check_arguments(fmt, out, overrides, ema)
    import torch  # after the arguments are checked: a typo costs no torch start-up

    from project.checkpoints import files as ckpt
    from project.checkpoints.loading import load

    model, cfg, saved, path = load(target, checkpoint, overrides, ema=ema)
    config = model_config(model, cfg, saved, path, fmt)
    config["source"]["sha256"] = ckpt.sha256(path)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    except OSError as e:
        raise UserError(f"--out {out} cannot be written ({e.strerror}). Pass a folder you can write to.") from None
    try:
        shape, norm = config["input"]["shape"], config["normalization"]
        sample = {n: sample_input(shape, norm, n) for n in (TRACE_BATCH, *CHECK_BATCHES)}
        write = {"safetensors": write_safetensors, "pt2": write_pt2, "onnx": write_onnx}[fmt]
        write(model, config, sample[TRACE_BATCH], tmp / FILES[fmt])
        atomic_json(tmp / "config.json", config)  # the check builds from the file as written (safetensors)
        with torch.no_grad():
            config["check"] = check(fmt, model, tmp, sample)
        atomic_json(tmp / "config.json", config)
        names = sorted(p.name for p in tmp.iterdir())
        umask = os.umask(0)
        os.umask(umask)
        for name in names:
            os.chmod(tmp / name, 0o666 & ~umask)  # as any file the user writes (mkdtemp's files may be private)
        from project.atomic import publish

        for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last: it describes the rest
            publish(tmp / name, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    tmp.rmdir()
    return {"config": config, "files": [out / n for n in names], "path": path, "model": type(model).__name__}


def model_config(model, cfg, saved: dict, path: Path, fmt: str) -> dict:
    """config.json: how to build the model (its _target_ and constructor arguments), how to feed it, what its
    outputs mean, and where it came from."""
    import torch

    from project import tasks
    from project.checkpoints.loading import model_card
    from project.data.normalisation import recorded

    kwargs = tasks.model_kwargs(cfg, saved.get("model_args"))  # as the model was built
    spec, runtime = kwargs.plain(), kwargs.runtime
    info = model_card(cfg, saved)
    image_size = info["image_size"]
    if not image_size:
        raise UserError("The config has no data.image_size, so the input size of the export is unknown. Pass it "
                        "as an override: data.image_size=256 (the size the model was trained at).")
    in_channels = int(runtime.get("in_channels") or info["in_channels"] or 3)
    weights = getattr(model, "weights", "model")
    shape = ["batch", in_channels, int(image_size), int(image_size)]
    # x = (pixel * scale - mean) / std, per channel
    norm = recorded(saved, cfg.data, in_channels)  # the checkpoint's (normalisation.to_input), per channel
    normalization = {"scale": 1 / 255, "mean": norm["mean"], "std": norm["std"]}
    return {
        "format": fmt,
        "file": FILES[fmt],
        "model": spec,
        "choices": {"model": (saved.get("choices") or {}).get("model")},  # which conf/model option gives its class
        "model_args": runtime,
        "dropped_modules": list(saved.get("dropped_modules") or []),
        "parameters": sum(p.numel() for p in model.parameters()),
        "task": info["task"],
        "classes": info["classes"],
        "colors": info["colors"],
        "flip_pairs": info["flip_pairs"],
        "ignore_index": info["ignore_index"],
        "input": {"name": "image", "shape": shape, "dtype": "float32", "layout": "NCHW",
                  "channels": "RGB" if in_channels == 3 else None},
        # logits over dim 1: softmax for probabilities, argmax for the class (indexes into classes)
        "output": outputs(model, sample_input(shape, normalization, TRACE_BATCH)),
        "image_size": int(image_size),
        "in_channels": in_channels,
        "normalization": normalization,
        "weights": weights,  # "ema": the run's exponential moving average; "model": the training weights
        "source": {"checkpoint": str(Path(path).resolve()), "epoch": saved.get("epoch"),
                   "validated_weights": saved.get("validated_weights", "model")},
        "torch_version": torch.__version__,
    }


def sample_input(shape: list, norm: dict, batch: int):
    """A random image of the training size, normalised as in training (seeded: every export checks the same)."""
    import torch

    _, channels, height, width = shape
    generator = torch.Generator().manual_seed(batch)
    pixels = torch.randint(0, 256, (batch, channels, height, width), generator=generator).float()
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return (pixels * norm["scale"] - mean) / std


def build_from_config(config: dict):
    """The model config.json describes, with fresh weights, in eval mode (load model.safetensors into it)."""
    from hydra.utils import instantiate

    from project.phases import drop_modules

    model = instantiate(dict(config["model"]), **config["model_args"])
    drop_modules(model, config.get("dropped_modules") or [])
    return model.eval()


def load_safetensors(directory, overrides=(), trust_config: bool = False):
    """(model in eval mode, config) from a `--format safetensors` folder. Its model class must be this
    installation's for the recorded model choice, or typed in `overrides` ("model._target_=pkg.Net");
    `trust_config=True` accepts config.json's own (docs/trust.md)."""
    from project.checkpoints import files

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    choices = {"model": (config.get("choices") or {}).get("model")}
    trust.check_targets({"model": config.get("model")}, choices, overrides, str(directory / "config.json"),
                        opt_in="trust_config=True", accept="warn" if trust_config else None)
    model = build_from_config(config)
    model.load_state_dict(files.read(directory / config["file"]))
    return model, config


def write_safetensors(model, config: dict, sample, path: Path) -> None:
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if value.untyped_storage().data_ptr() in seen:  # tied weights: safetensors stores each tensor on its own
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[name] = value
    save_file(tensors, str(path), metadata={"format": "pt", "config": "config.json"})


def forward_inputs(model) -> list[str]:
    """The inputs forward requires: ["images"] for the models here; swin_mmoe's also takes tabular data."""
    import inspect

    return [p.name for p in inspect.signature(model.forward).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def single_image_input(model, fmt: str) -> None:
    """pt2 and onnx trace forward(image): a model that needs more inputs is refused."""
    needs = forward_inputs(model)
    if len(needs) != 1:
        raise ExportFailed(f"--format {fmt} traces forward(image), but {type(model).__name__}.forward takes "
                           f"{', '.join(needs)}. Use --format safetensors (weights + config.json), which keeps any "
                           "forward. Nothing was written.")


def batch_dimension(model, fmt: str) -> tuple:
    """dynamic_shapes for forward(image): the batch dimension named "batch", any size from 1."""
    import torch

    single_image_input(model, fmt)
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def exported_program(model, sample, fmt: str):
    import torch

    shapes = batch_dimension(model, fmt)
    try:
        return torch.export.export(model, (sample,), dynamic_shapes=shapes)
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds for code it cannot trace
        raise ExportFailed(f"torch.export could not trace {type(model).__name__} with a dynamic batch "
                           f"({type(e).__name__}: {first_line(e)}). Use --format safetensors, or make forward "
                           "traceable (torch.export's draft_export() lists every problem). Nothing was "
                           "written.") from None


def write_pt2(model, config: dict, sample, path: Path) -> None:
    import torch

    torch.export.save(exported_program(model, sample, "pt2"), str(path))


def write_onnx(model, config: dict, sample, path: Path) -> None:
    import contextlib
    import io

    import torch

    # the module itself, not an ExportedProgram: so the input's batch dimension keeps its name ("batch", not "s77")
    shapes = batch_dimension(model, "onnx")
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30  # protobuf's 2 GB limit
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            onnx_program = torch.onnx.export(model, (sample,), dynamo=True, dynamic_shapes=shapes,
                                             input_names=["image"], external_data=big, verbose=False,
                                             output_names=[o["name"] for o in config["output"]])
    except Exception as e:  # noqa: BLE001 - tracing (torch.export) or translating to ONNX failed
        raise ExportFailed(f"torch.onnx.export could not export {type(model).__name__} with a dynamic batch "
                           f"({type(e).__name__}: {first_line(e)}). Use --format pt2 or safetensors. Nothing was "
                           "written.") from None
    onnx_program.save(str(path), external_data=big)  # big: the weights go to model.onnx.data beside it


def outputs(model, sample) -> list[dict]:
    """Name and shape of each output of forward(sample): a tensor is "logits", a dict's entries keep their keys."""
    import torch

    if len(forward_inputs(model)) != 1:
        return []  # forward needs more than the image: its outputs are not probed here
    with torch.no_grad():
        out = model(sample)
    named = {"logits": out} if isinstance(out, torch.Tensor) else out if isinstance(out, dict) else {
        f"output_{i}": t for i, t in enumerate(leaves(out))}
    return [{"name": str(k), "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}
            for k, t in named.items() if isinstance(t, torch.Tensor)]


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(text[0].split())[:300] if text else ""


def leaves(out) -> list:
    import torch

    return [t.detach().float() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def check(fmt: str, model, folder: Path, sample: dict) -> dict:
    """Load the written file back and compare it with the eager model on the check batches."""
    import torch

    rtol, atol = TOLERANCES[fmt]
    path = folder / FILES[fmt]
    if fmt == "safetensors":
        with trust.accepting("own"):  # written just now from the config the model was built from
            reloaded, _ = load_safetensors(folder)
        theirs, ours = reloaded.state_dict(), model.state_dict()
        if theirs.keys() != ours.keys() or not all(torch.equal(theirs[k].cpu(), ours[k].cpu()) for k in ours):
            raise ExportFailed(f"{path.name} read back does not hold the model's weights bit for bit. Nothing was "
                               "written.")
        run = lambda x: leaves(reloaded(x))  # noqa: E731
    elif fmt == "pt2":
        program = torch.export.load(str(path)).module()
        run = lambda x: leaves(program(x))  # noqa: E731
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda x: [torch.from_numpy(a).float() for a in session.run(None, {name: x.numpy()})]  # noqa: E731
    batches = (TRACE_BATCH,) if fmt == "safetensors" else CHECK_BATCHES
    if len(forward_inputs(model)) != 1:
        batches = ()  # forward(images, more): only the weights are compared (bit for bit, above)
    worst, agree, positions = 0.0, 0, 0
    for n in batches:
        x = sample[n]
        want, got = leaves(model(x)), run(x)
        if len(want) != len(got) or any(w.shape != g.shape for w, g in zip(want, got)):
            raise ExportFailed(f"{path.name} at batch {n} returns shapes {[tuple(g.shape) for g in got]}, the model "
                               f"{[tuple(w.shape) for w in want]}. Nothing was written.")
        for w, g in zip(want, got):
            result = compare(w, g, rtol, atol)
            worst = max(worst, result["max_abs_diff"])
            agree, positions = agree + result["argmax_agree"], positions + result["positions"]
            if not result["close"] or result["argmax_disagree_clear"]:
                raise ExportFailed(
                    f"{path.name} does not reproduce the model at batch {n}: max |diff| {result['max_abs_diff']:.3g} "
                    f"(allowed: rtol {rtol:g}, atol {atol:g}), argmax differs at {result['argmax_disagree_clear']} "
                    f"of {result['positions']} positions where the model's top two classes are clearly apart. "
                    "Nothing was written; --format safetensors keeps the eager model exactly.")
    return {"runtime": {"safetensors": "a model built afresh from config.json", "pt2": "torch.export.load",
                        "onnx": "onnxruntime CPUExecutionProvider"}[fmt],
            "inputs": forward_inputs(model), "batches": list(batches), "rtol": rtol, "atol": atol,
            "max_abs_diff": worst,
            "argmax_agreement": agree / positions if positions else 1.0, "argmax_positions": positions}


def compare(want, got, rtol: float, atol: float) -> dict:
    """Elementwise closeness (|got - want| <= atol + rtol * |want|) and argmax agreement over dim 1 (the classes).
    A disagreement counts against the export only where the eager top two classes are further apart than the
    tolerance allows (a near tie may fall either way)."""
    diff = (got - want).abs()
    close = bool((diff <= atol + rtol * want.abs()).all())
    if want.dim() < 2 or want.shape[1] < 2:
        return {"close": close, "max_abs_diff": float(diff.max()) if diff.numel() else 0.0, "argmax_agree": 0,
                "positions": 0, "argmax_disagree_clear": 0}
    top2 = want.topk(2, dim=1).values
    margin = top2.select(1, 0) - top2.select(1, 1)
    slack = 2 * (atol + rtol * want.abs().amax(dim=1))
    same = want.argmax(1) == got.argmax(1)
    return {"close": close, "max_abs_diff": float(diff.max()), "argmax_agree": int(same.sum()),
            "positions": same.numel(), "argmax_disagree_clear": int((~same & (margin > slack)).sum())}


def atomic_json(path: Path, obj) -> None:
    from project.atomic import write_atomic

    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def report(written: dict) -> str:
    from project.data.normalisation import overrides

    config, check_ = written["config"], written["config"]["check"]
    epoch = config["source"]["epoch"]
    lines = [f"Exported {written['path']} ({f'epoch {epoch}, ' if epoch is not None else ''}{config['weights']} "
             f"weights) as {config['format']}:"]
    lines += [f"  {p} ({size(p)})" for p in written["files"]]
    shape = ", ".join(map(str, config["input"]["shape"]))
    lines.append(f"  parameters: {config['parameters']:,} ({written['model']}); input ({shape}) "
                 f"float32, normalised (pixel/255 - mean) / std, per channel: "
                 f"{overrides(config['normalization'])}")
    if not check_["batches"]:  # forward takes more than the image: the weights alone were compared
        lines.append(f"  check: {check_['runtime']}: weights bit for bit (outputs not compared: forward takes "
                     f"{', '.join(check_['inputs'])})")
    else:
        batches = " and ".join(map(str, check_["batches"]))
        traced = (f" (traced at {TRACE_BATCH}: the batch dimension is dynamic)" if config["format"] != "safetensors"
                  else "")
        exact = "weights bit for bit, " if config["format"] == "safetensors" else ""
        lines.append(f"  check: {check_['runtime']} vs the eager model at batch {batches}{traced}: {exact}max |diff| "
                     f"{check_['max_abs_diff']:.2g} (rtol {check_['rtol']:g}, atol {check_['atol']:g}), argmax "
                     f"agrees at {check_['argmax_agreement']:.2%} of {check_['argmax_positions']:,} positions")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
