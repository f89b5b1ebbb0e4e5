"""Data decides the task: does the chosen objective and model fit it?

Each data config declares `task` (segmentation, classification or multitask) and selects its default objective in
its defaults list. What cannot work (classification data with a segmentation loss or model, a model whose output
classes or input channels disagree with the data) stops here, before training, with one paragraph that names
both choices and the fix: the objective is checked against the declared task, the model by one forward pass on
two validation samples (eval mode, no gradients, nothing random drawn).
"""
import inspect
import itertools
import logging
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import default_collate

from project.checkpoints.trust import hydra_refusal
from project.errors import UnreadableFile, UserError

log = logging.getLogger(__name__)

FITS = {  # what trains each task, for the fix in the messages
    "segmentation": "model=microsegformer or model=unet with loss=ce_dice",
    "classification": "model=resnet with loss=cross_entropy",
    "multitask": "model=swin_mmoe with loss=cross_entropy",
}


def build_data(cfg, augment: bool = True) -> dict:
    """The data's builder gets its config without `task`, which is a declaration for the checks here, and the
    augment option's transforms (for the training split) as a runtime argument when there are any."""
    spec = cfg.data.copy()
    with open_dict(spec):
        task = spec.pop("task", None)
    transforms = cfg.get("augment", {}).get("transforms") if augment else None
    extra = {}
    if transforms:
        if not {"*", "augment"} & accepted_args(spec.get("_target_")):
            raise UserError(f"{choice(cfg, 'augment')} augments folder data (data=seg_folder, celebamask, lapa or "
                            f"image_folder), but {choice(cfg, 'data')} takes no augmentation. Leave augment= out "
                            "for it. Nothing was trained or written.")
        extra["augment"] = instantiate(transforms, _convert_="all")
    try:
        data = instantiate(spec, **extra)
    except InstantiationException as e:  # the builder's own UserError, without Hydra's wrapping
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
    data.setdefault("task", task)
    return data


def accepted_args(target: str | None) -> set[str]:
    """The keyword arguments a `_target_` callable takes (all of them: {"*"} for **kwargs)."""
    import inspect

    from hydra.utils import get_object

    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except (TypeError, ValueError, ImportError):
        return {"*"}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"*"}
    return {p.name for p in params}


@dataclass
class ModelKwargs:
    """How a model's class is built: `config` is cfg.model (its `_target_` and keys; `model.dropout: null`
    (conf/model/custom.yaml) left out, so the class's own default applies), `runtime` the data's runtime arguments
    (classes, channels, tasks) that its constructor accepts by its signature (`**kwargs` takes them all), `dropped`
    the ones it does not take, `takes` the names it takes ({"*"} for **kwargs)."""

    target: str | None
    config: DictConfig
    runtime: dict
    dropped: list[str]
    takes: set[str]

    def unknown(self) -> list[str]:
        """Config keys the constructor does not take."""
        if "*" in self.takes:
            return []
        return [k for k in self.config if not str(k).startswith("_") and k not in self.takes]

    def plain(self) -> dict:
        """The config as plain Python values, interpolations resolved (`_target_` and the other `_` keys kept)."""
        return OmegaConf.to_container(self.config, resolve=True)

    def keywords(self) -> dict:
        """Everything the constructor gets, as plain values: the config's keys, then the runtime arguments."""
        return {**{k: v for k, v in self.plain().items() if not str(k).startswith("_")}, **self.runtime}


def model_kwargs(cfg, model_args: dict) -> ModelKwargs:
    """The one place the constructor arguments of cfg.model are worked out: for building (build_model), exporting
    (project-export's config.json) and the stand-alone solution (project-predict's run.py)."""
    config, runtime = cfg.model.copy(), dict(model_args or {})
    with open_dict(config):
        if "dropout" in config and config.dropout is None:
            del config["dropout"]  # not set: the class's own default applies
    target = config.get("_target_")
    takes = accepted_args(target)
    dropped = [] if "*" in takes else [k for k in runtime if k not in takes]
    return ModelKwargs(target, config, {k: v for k, v in runtime.items() if k not in dropped}, dropped, takes)


def build_model(cfg, data: dict) -> torch.nn.Module:
    """The model with the data's runtime arguments (classes, channels, tasks) that its constructor accepts (by its
    signature; `**kwargs` takes them all; the others are left out and logged). Whether the data fits the model is
    then the one-batch probe's decision (probe_model). A config key the constructor does not take is a UserError
    listing the arguments it does take; `model.dropout: null` (conf/model/custom.yaml) is not passed at all."""
    kwargs = model_kwargs(cfg, data["model_args"])
    spec, target, runtime, unknown = kwargs.config, kwargs.target, kwargs.runtime, kwargs.unknown()
    if unknown:
        raise UserError(
            f"{choice(cfg, 'model')} sets {', '.join(f'model.{k}={spec[k]}' for k in unknown)}, but {target} "
            f"does not take {'it' if len(unknown) == 1 else 'them'}: its arguments are "
            f"{inspect.signature(get_object(target))}. Leave "
            f"{'that key' if len(unknown) == 1 else 'those keys'} out (or give the class such an argument); set "
            "the ones it takes with model.KEY=value (+model.KEY=value for a key the config does not list). "
            "Nothing was trained or written.")
    if kwargs.dropped:
        log.info("%s takes no %s argument: the data's %s not passed (it gets %s)", target, " or ".join(kwargs.dropped),
                 ", ".join(f"{k}={data['model_args'][k]}" for k in kwargs.dropped), ", ".join(
                     f"{k}={v}" for k, v in runtime.items()) or "nothing from the data")
    try:
        return instantiate(spec, **runtime)
    except InstantiationException as e:
        refused = hydra_refusal(e, choice(cfg, "model"))  # its target blocklist: one paragraph, not a traceback
        if refused is not None:
            raise refused from None
        if not isinstance(e.__cause__, TypeError) or target is None:
            raise
        task = data.get("task") or "this"
        reason = " ".join(str(e.__cause__).split())[:300]
        raise UserError(
            f"{choice(cfg, 'model')} cannot be built for {choice(cfg, 'data')} ({task} data), which passes it "
            f"{sorted(runtime)}: {reason}. For {task} data use {FITS.get(task, 'a model made for it')}. "
            "Nothing was trained or written.") from None


def choice(cfg, group: str) -> str:
    """`group=option` as the user typed or defaulted it; the class path where Hydra's choices are unknown."""
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized() and HydraConfig.get().runtime.choices.get(group):
        return f"{group}={HydraConfig.get().runtime.choices[group]}"
    target = cfg[group].get("_target_")
    return f"{group}._target_={target}" if target else f"the {group} option"


def check_objective(cfg, objective, data: dict) -> None:
    """The final objective against the data's declared task."""
    task, fits = data.get("task"), getattr(objective, "tasks", None)
    if task is None or fits is None:
        return  # a user's own data or objective that declares nothing: the model probe still runs
    if task not in fits:
        raise UserError(
            f"{choice(cfg, 'loss')} trains {' or '.join(fits)} but {choice(cfg, 'data')} is {task} data, so "
            f"they cannot train together. Leave loss= out (the data selects its objective), or for {task} use "
            f"{FITS.get(task, 'an objective made for it')}. Nothing was trained or written.")
    unknown = sorted(set(cfg.loss.get("task_weights") or {}) - set(data.get("tasks") or {"label": 0}))
    if unknown:
        raise UserError(
            f"loss.task_weights names {unknown}, which {choice(cfg, 'data')} does not have (its tasks: "
            f"{sorted(data.get('tasks') or ['label'])}). Weigh only the data's tasks. Nothing was trained or written.")


def probe_samples(val) -> list:
    """The first two validation samples that can be read (data.on_bad_file=skip leaves the others out)."""
    from project.data.folder import FIX
    from project.data.loader import Skipped

    try:
        samples = list(itertools.islice((s for s in map(val.__getitem__, range(len(val)))
                                         if not isinstance(s, Skipped)), 2))
    except UnreadableFile as e:  # met before training: a refusal, nothing written
        raise UserError(f"{e.text} {FIX} Nothing was trained or written.") from None
    if not samples:
        raise UserError("No validation sample can be read (data.on_bad_file=skip skipped them all); "
                        "`project-preview --check-files` lists the files. Nothing was trained or written.")
    return samples


def probe_model(cfg, model: torch.nn.Module, data: dict, device: torch.device) -> None:
    """One forward pass on two validation samples: the output must be what the data's task scores."""
    batch = tuple(b.to(device) for b in default_collate(probe_samples(data["val"])))
    task = data.get("task") or infer_task(batch)
    names = f"{choice(cfg, 'model')} and {choice(cfg, 'data')} ({task} data)"
    fix = f"For {task} data use {FITS.get(task, 'a model made for it')}, or make the model fit the data."
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(*batch[:2]) if task == "multitask" else model(batch[0])
    except Exception as e:  # noqa: BLE001 - any failure here means the two do not fit; say which and why
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"{names} do not fit: the model fails on the data's batches "
                        f"(images {tuple(batch[0].shape)}): {type(e).__name__}: {reason}. {fix} "
                        "Nothing was trained or written.") from None
    finally:
        model.train(was_training)
    problem = output_problem(task, outputs, batch, data)
    if problem:
        raise UserError(f"{names} do not fit: {problem}. {fix} Nothing was trained or written.")


def output_problem(task: str, outputs, batch: tuple, data: dict) -> str | None:
    """What is wrong with the model's outputs for this task, or None."""
    n = len(batch[0])
    if task == "multitask":
        tasks = data.get("tasks") or {}
        if not isinstance(outputs, dict) or set(outputs) != set(tasks):
            got = sorted(outputs) if isinstance(outputs, dict) else f"one {type(outputs).__name__}"
            return f"the model returns {got}, but the data has the tasks {sorted(tasks)} (a dict of logits is needed)"
        wrong = {t: tuple(o.shape) for t, o in outputs.items() if tuple(o.shape) != (n, tasks[t])}
        return f"per-task logits {wrong} should be (batch, classes of the task)" if wrong else None
    if not torch.is_tensor(outputs):
        return f"the model returns {type(outputs).__name__}, but {task} needs one tensor of logits"
    classes = len(data["classes"])
    if task == "segmentation":
        want = (n, classes, *batch[1].shape[1:])
        what = "per-pixel logits (batch, classes, height, width)"
    else:
        want, what = (n, classes), "class logits (batch, classes)"
    if tuple(outputs.shape) != want:
        return (f"the model outputs {tuple(outputs.shape)}, but the data's {classes} classes need {what} = {want}")
    return None


def infer_task(batch: tuple) -> str:
    """For data that declares no task: (images, masks), (images, labels) or (images, tabular, labels...)."""
    if len(batch) > 2:
        return "multitask"
    return "segmentation" if batch[1].dim() == 3 else "classification"
