"""A trained model back from a run dir or a checkpoint, built from the checkpoint's own config, in eval mode:

    from project import load_model
    model, cfg = load_model("outputs/2026-11-27/12-00-00")             # best_model.pth's validated weights
    model, cfg = load_model("their_best_model.pth", overrides=["model=custom", "model._target_=pkg.Net",
                                                               "data=celebamask"])   # a file another script wrote

`model_card()` gives what prediction and export need besides the weights: class names, colours, flip pairs, the
input size and the normalisation, the task.
"""


def load(target, checkpoint: str = "best", overrides: list[str] | None = None, weights_key: str | None = None,
         ema: str = "auto", trust_config: bool = False):
    """(model in eval mode on the CPU, cfg, saved dict, path). Our files are built from their own config (and
    `overrides` on top), whose targets must be this installation's or typed in `overrides` (project/checkpoints/
    trust.py; `trust_config` accepts the file's own); another script's file from the config the overrides compose
    (its stored best read under that config's metric, see opening.py)."""
    from project import phases, resume, tasks
    from project.checkpoints import foreign, resolve, trust
    from project.checkpoints.opening import open_checkpoint

    path = resolve.checkpoint_file(target, "load_model", checkpoint)
    opened = open_checkpoint(path, overrides=overrides or [], weights_key=weights_key)
    cfg, saved = opened.cfg, opened.state
    if opened.ours:  # the file supplies values, this installation the code: before anything is built
        trust.check_targets(cfg, trust.recorded_choices(saved), overrides, str(path),
                            "trust_config=True" if trust_config else trust.FLAG, "warn" if trust_config else None)
    model_args = saved.get("model_args")
    if not model_args:  # a file without them (another script's): the data says, and names the classes for model_card()
        data = tasks.build_data(cfg, augment=False)
        model_args = data["model_args"]
        saved.setdefault("classes", list(data.get("classes") or []))
        saved["model_args"] = dict(model_args)  # in memory only: what the model was built with (solution export)
    model = tasks.build_model(cfg, {"model_args": dict(model_args), "task": cfg.data.get("task")})
    phases.drop_modules(model, list(saved.get("dropped_modules") or []))
    key, weights = opened.weights(ema, weights_key)
    if not opened.ours:
        weights, _ = foreign.strip_prefixes(weights, model.state_dict())
    resume.check_weights_fit(model, weights, path)
    model.load_state_dict(weights)
    model.eval()
    model.weights = key  # which weights these are: "model" or "ema"
    return model, cfg, saved, path


def model_card(cfg, saved: dict) -> dict:
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


def load_model(target, checkpoint: str = "best", overrides: list[str] | None = None, ema: str = "auto",
               trust_config: bool = False):
    """(model, cfg): the model in eval mode with the checkpoint's validated weights, and its config. The model's
    class is this installation's for the file's recorded choices, or one typed in `overrides`
    ("model._target_=pkg.Net"); `trust_config=True` accepts the file's own classes (docs/trust.md)."""
    model, cfg, _, _ = load(target, checkpoint, overrides, ema=ema, trust_config=trust_config)
    return model, cfg
