"""The preprocessing a model's weights expect, stated once (data.mean, data.std), recorded in every checkpoint (the
summary key `normalisation`) and applied by one function, `to_input`, wherever an image becomes a model input:
training and validation (folder.Pipeline, the generated data), project-evaluate and project-predict
(evaluation.inference), the solution's run.py (a verbatim copy, evaluation.solution.render), export's config.json
and load_model (checkpoints.loading.model_card).

mean and std are per channel on the 0-1 pixel scale, as torchvision's Normalize after ToDtype(scale=True):
x = (pixel / 255 - mean) / std. Runs and files saved before they were recorded used LEGACY.
"""
import torch

from project.errors import UserError

LEGACY = {"mean": [0.5], "std": [0.25]}  # what every run before data.mean/data.std was made for (and the default)
CONVENTIONS = {  # what other scripts feed their models; the names the checks and the docs use
    "/255": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "[-1, 1]": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "ImageNet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


def resize(image, size, antialias=True):
    """torchvision's resize, imported on first use: importing torchvision costs every process start over a second
    (it loads torch._dynamo), and data generated at the model's size never resizes."""
    try:
        from torchvision.transforms.v2.functional import resize as torchvision_resize
    except ImportError:  # torchvision before 0.15 (the solution's run.py carries the same fallback)
        from torchvision.transforms.functional import resize as torchvision_resize
    return torchvision_resize(image, size, antialias=antialias)


def to_input(image, size, mean, std):
    """An image (C, H, W) or a batch (N, C, H, W), uint8 pixels or floats already on the 0-1 scale, as the model's
    input: resized to size x size (antialiased; no-op at that size), scaled to 0-1, then (x - mean) / std per
    channel. mean and std: a number or one per channel. Copied verbatim into the solution's run.py."""
    if tuple(image.shape[-2:]) != (int(size), int(size)):
        image = resize(image, [int(size), int(size)], antialias=True)
    x = image.float() if image.is_floating_point() else image.float() / 255
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def to_pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """to_input undone, for pictures: (C, H, W) model input -> 0-1 floats."""
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def checked(mean, std, channels: int = 3) -> dict:
    """data.mean / data.std as recorded: {"mean": [...], "std": [...]}, one value per channel (a single number
    stands for every channel). A value that cannot be meant is one paragraph with the fix."""
    values = {}
    for name, given in (("mean", mean), ("std", std)):
        try:
            value = [float(given)] if isinstance(given, (int, float)) else [float(v) for v in given]
        except (TypeError, ValueError):
            value = []
        if len(value) == 1:
            value = value * channels
        if len(value) != channels:
            raise UserError(f"data.{name}={given} must be one number, or one per channel ({channels}, "
                            f"data.in_channels), on the 0-1 pixel scale, e.g. data.{name}={common_values(name)}.")
        values[name] = value
    if any(s <= 0 for s in values["std"]) or max(map(abs, values["mean"] + values["std"])) > 1.5:
        raise UserError(f"data.mean={values['mean']} data.std={values['std']}: both are on the 0-1 pixel scale "
                        "(x = (pixel / 255 - mean) / std), std above 0: divide 0-255 statistics by 255. Common "
                        f"values: {common_values()}.")
    return values


def common_values(name: str | None = None) -> str:
    """The conventions as the overrides that set them."""
    if name:
        return CONVENTIONS["ImageNet"][name].__repr__().replace(" ", "")
    return "; ".join(f"{label}: {overrides(n)}" for label, n in CONVENTIONS.items())


def overrides(norm: dict) -> str:
    """data.mean=[...] data.std=[...], as typed on the command line."""
    fmt = lambda values: "[" + ",".join(f"{v:g}" for v in values) + "]"  # noqa: E731
    return f"data.mean={fmt(norm['mean'])} data.std={fmt(norm['std'])}"


def of_config(data_cfg, channels: int | None = None) -> dict:
    """The normalisation a data config states; one that states none (a run from before) is LEGACY's."""
    channels = int(channels or data_cfg.get("in_channels") or 3)
    return checked(data_cfg.get("mean", LEGACY["mean"]), data_cfg.get("std", LEGACY["std"]), channels)


def recorded(saved: dict, data_cfg, channels: int | None = None) -> dict:
    """A checkpoint's: the summary key it was saved with, else its (or the composed) config's, else LEGACY."""
    norm = saved.get("normalisation")
    if norm:
        channels = int(channels or len(norm["mean"]))
        return checked(norm["mean"], norm["std"], channels)
    return of_config(data_cfg, channels)


def named(data: dict) -> str:
    """' (inputs data.mean=[...] data.std=[...])' for the log lines that report a score, '' for data that states
    none: a score means something only with the inputs it was computed on."""
    norm = data.get("normalisation")
    return f" (inputs {overrides(norm)})" if norm else ""
