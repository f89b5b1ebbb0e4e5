"""A trained model back from a run dir or a checkpoint, built from the checkpoint's own config, in eval mode:

    from project import load_model
    model, cfg = load_model("outputs/2026-11-27/12-00-00")             # best_model.pth's validated weights
    model, cfg = load_model("their_best_model.pth", overrides=["model=custom", "model._target_=pkg.Net",
                                                               "data=celebamask"])   # a file another script wrote

`describe()` gives what prediction and export need besides the weights: class names, colours, flip pairs, the
input size and the normalisation, the task.
"""
from pathlib import Path

from omegaconf import OmegaConf

from project.errors import UserError

FILES = {"best": "best_model.pth", "last": "last.pth", "final": "final_model.pth"}


def checkpoint_path(target, checkpoint: str = "best") -> Path:
    """A run dir's checkpoints/<checkpoint> file, or the file itself."""
    target = Path(target).expanduser()
    if target.is_file():
        return target
    if checkpoint not in FILES:
        raise UserError(f"--checkpoint {checkpoint} is unknown: use best, last or final (or pass a .pth file).")
    for candidate in (target / "checkpoints" / FILES[checkpoint], target / FILES[checkpoint]):
        if candidate.is_file():
            return candidate
    raise UserError(f"{str(target)!r} is neither a checkpoint file nor a run dir with checkpoints/{FILES[checkpoint]}. "
                    "Pass a run directory (outputs/<date>/<time>) or a .pth file.")


def compose(overrides: list[str]):
    """The config run.py would compose from these overrides (for files without a config of ours)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as e:  # a bad override: Hydra's own message names it
        raise UserError(f"Could not compose the config from {list(overrides)}: {e}") from None


def load(target, checkpoint: str = "best", overrides: list[str] | None = None, weights_key: str | None = None,
         ema: str = "auto"):
    """(model in eval mode on the CPU, cfg, saved dict, path). Our files are built from their own config (and
    `overrides` on top); another script's file from the config the overrides compose."""
    from project import phases, resume, tasks
    from project.checkpoints import files as ckpt
    from project.checkpoints import foreign

    path = checkpoint_path(target, checkpoint)
    raw = ckpt.read(path)
    if ckpt.is_ours(raw):
        saved = ckpt.check(path, raw)
        cfg = OmegaConf.create(saved["config"])
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o for o in overrides if "=" in o and "." in o.split("=")[0]]))
    else:
        cfg = compose(overrides or [])
        saved = foreign.normalise(raw, path, weights_key, "best_f_score")
    model_args = saved.get("model_args")
    if not model_args:  # a file without them (another script's): the data says, and names the classes for describe()
        data = tasks.build_data(cfg, augment=False)
        model_args = data["model_args"]
        saved.setdefault("classes", list(data.get("classes") or []))
        saved["model_args"] = dict(model_args)  # in memory only: what the model was built with (solution export)
    model = tasks.build_model(cfg, {"model_args": dict(model_args), "task": cfg.data.get("task")})
    phases.drop_modules(model, list(saved.get("dropped_modules") or []))
    key, weights = pick_weights(saved, ema, weights_key, resume)
    if not ckpt.is_ours(raw):
        weights, _ = foreign.strip_prefixes(weights, model.state_dict())
    resume.check_weights_fit(model, weights, path)
    model.load_state_dict(weights)
    model.eval()
    model.weights = key  # which weights these are: "model" or "ema"
    return model, cfg, saved, path


def pick_weights(saved: dict, ema: str, weights_key, resume) -> tuple[str, dict]:
    """--ema auto: the weights that were validated (resume.validated_weights); on / off: the EMA copy or not."""
    if ema == "auto" or weights_key:
        return resume.validated_weights(saved, weights_key)
    if ema == "on":
        if saved.get("ema_state_dict") is None:
            raise UserError("--ema on, but the checkpoint holds no EMA weights (trainer.ema.decay was off). Use "
                            "--ema auto or off.")
        return "ema", saved["ema_state_dict"]
    if ema == "off":
        return "model", saved["model_state_dict"]
    raise UserError(f"--ema {ema} is unknown: use auto (the validated weights), on or off.")


def describe(cfg, saved: dict) -> dict:
    """What using the model needs besides its weights."""
    from project.data.folder import palette
    from project.data.normalisation import recorded

    data = cfg.data
    classes = list(saved.get("classes") or data.get("classes") or [])
    if not classes and data.get("num_classes"):
        classes = [str(i) for i in range(data.num_classes)]
    colors = data.get("colors") or palette(len(classes))
    norm = recorded(saved, data, data.get("in_channels", 3))
    return {"task": data.get("task"), "classes": classes, "colors": [list(c) for c in colors],
            "flip_pairs": [list(p) for p in data.get("flip_pairs") or []], "image_size": data.get("image_size"),
            "in_channels": data.get("in_channels", 3), **norm,
            "ignore_index": data.get("ignore_index", 255)}


def load_model(target, checkpoint: str = "best", overrides: list[str] | None = None, ema: str = "auto"):
    """(model, cfg): the model in eval mode with the checkpoint's validated weights, and its config."""
    model, cfg, _, _ = load(target, checkpoint, overrides, ema=ema)
    return model, cfg
