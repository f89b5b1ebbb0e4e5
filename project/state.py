"""The one training state: everything a resume restores, registered by name in one mapping.

    state = {"model": model, "ema": ema, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
             "progress": progress, "train_meter": meter, "tracker": logger, "rng": RNG()}

Every entry has `state_dict()` / `load_state_dict()` (torch.distributed.checkpoint's `Stateful`). Adding a new
piece of state is one entry here, nothing else: saving walks the mapping, loading walks it in its order (the
model before the optimizer, the RNG last, so nothing draws random numbers after it is restored), and
`tests/test_state.py` round-trips every entry.

A checkpoint file is that mapping's state dicts in the layout users read (`<name>_state_dict` at the top level;
the progress fields flat: `epoch`, `global_step`, ...), plus summary keys derived at save time (`phase`,
`best_f_score`, `decoder_removed`, ...) which are never read back.
"""
import logging
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from project import distributed

# Which entries each resume mode restores. reset_optimizer loads the weights that were validated (the EMA copy
# when the parent validated with it, see resume.validated_weights) into "model"; everything else starts fresh.
RESTORES = {
    "full": {"model", "ema", "optimizer", "scheduler", "scaler", "progress", "train_meter", "tracker", "rng"},
    "reset_optimizer": {"model"},
}
# Where an entry lives in the file; anything else is "<name>_state_dict". None: the entry's state dict is spread
# over the top level (its keys are listed in the object's FIELDS), as users read `epoch` or `ema_state_dict`.
FILE_KEYS = {"progress": None, "ema": None, "train_meter": "train_meter", "tracker": "logger", "rng": "rng"}


def file_key(name: str) -> str | None:
    return FILE_KEYS.get(name, f"{name}_state_dict")


def state_dicts(state: dict) -> dict:
    """The checkpoint entries: {file key: state dict}, progress fields flat."""
    out = {}
    for name, obj in state.items():
        key = file_key(name)
        if key is None:
            out.update(obj.state_dict())
        else:
            out[key] = obj.state_dict()
    return out


def saved_entry(checkpoint: dict, name: str, obj):
    """The state of entry `name` in a (v2) checkpoint dict; None when the file has none (EMA was off, the
    scaler was disabled: an empty dict)."""
    key = file_key(name)
    value = {k: checkpoint[k] for k in obj.FIELDS if k in checkpoint} if key is None else checkpoint.get(key)
    return value or None


def load_state_dicts(state: dict, checkpoint: dict, names: set) -> list[str]:
    """Load the entries in `names` from `checkpoint`, in the registry's order; returns those the file lacked
    (turned on only now, such as EMA or 16-mixed: they start fresh)."""
    fresh = []
    for name, obj in state.items():
        if name not in names:
            continue
        saved = saved_entry(checkpoint, name, obj)
        if saved is not None:
            obj.load_state_dict(saved)
        elif obj.state_dict():  # an entry with nothing to keep (logger=csv, a disabled scaler) is not news
            fresh.append(name)
    return fresh


@dataclass
class Progress:
    """Where the run is: counters, phase, best scores, early stopping and lineage."""

    epoch: int = 0                 # epochs finished
    global_step: int = 0           # optimizer steps taken
    batch_in_epoch: int = 0        # batches of the current epoch already trained (always a window boundary)
    phase_index: int = 0
    phase_start: int = 0           # the epoch the current phase began at
    phase_ends: list = field(default_factory=list)
    phase_best: dict = field(default_factory=dict)   # {phase key: {"score", "epoch"}}
    best_score: float | None = None                  # of the final phase's metric: best_model.pth
    best_epoch: int = 0
    val_metrics: dict = field(default_factory=dict)
    train_metrics: dict = field(default_factory=dict)
    bad_epochs: int = 0            # early stopping: validations without improvement in this phase
    phase_stopped: bool = False
    nonfinite_skips: int = 0       # trainer.on_nonfinite=skip: steps skipped so far
    lineage: list = field(default_factory=list)
    parent_best: dict | None = None
    best_per_class: dict = field(default_factory=dict)  # the best validation's per-class scores
    start_score: dict | None = None  # a continuation's starting weights, scored here: {"score", "epoch", "metric"}

    def state_dict(self) -> dict:
        d = asdict(self)
        # the file keeps today's layout: early stopping counters in one dict
        d["early_stopping"] = {"bad_epochs": d.pop("bad_epochs"), "stopped": d.pop("phase_stopped")}
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        d = dict(state_dict)
        es = d.pop("early_stopping", {})
        d.update(bad_epochs=es.get("bad_epochs", 0), phase_stopped=es.get("stopped", False))
        for key, value in d.items():
            setattr(self, key, value)


Progress.FIELDS = tuple(Progress().state_dict())  # its keys at the top level of a checkpoint, derived


class TrainMeter:
    """The current epoch's running train statistics, kept on the device (no host sync per step): the loss sum,
    the objective's metric meter, the gradient norm of each optimizer step and the steps skipped by the scaler.
    A stop between steps saves them, so a resumed epoch reports what an uninterrupted one would."""

    def __init__(self, meter, device):
        self.device = torch.device(device)
        self.reset(meter)

    def reset(self, meter) -> None:
        self.meter = meter
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.grad_norm_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.grad_norms = torch.zeros((), device=self.device, dtype=torch.int64)  # finite norms counted
        self.skipped_steps = 0  # known on the host: the scaler syncs to decide a skip anyway

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        finite = torch.isfinite(norm)  # a step the scaler skips has an inf norm: leave it out of the mean
        self.grad_norm_sum += torch.where(finite, norm.double(), 0.0)
        self.grad_norms += finite

    def compute(self, batches: int) -> dict:
        out = {"loss": self.loss_sum.item() / max(batches, 1), **self.meter.compute()}
        if self.grad_norms.item():
            out["grad_norm"] = (self.grad_norm_sum / self.grad_norms).item()
        if self.skipped_steps:
            out["skipped_steps"] = self.skipped_steps
        return out

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "meter": self.meter.state_dict(),
                "grad_norm_sum": self.grad_norm_sum.cpu(), "grad_norms": self.grad_norms.cpu(),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.loss_sum = state_dict["loss_sum"].to(self.device, torch.float64)
        # the file holds the job's metric counts: rank 0 carries them on, the other ranks count from zero
        meter = state_dict["meter"]
        self.meter.load_state_dict(meter if distributed.current().main else distributed.zeros_like(meter))
        self.grad_norm_sum = state_dict.get("grad_norm_sum", torch.zeros((), dtype=torch.float64)).to(self.device)
        self.grad_norms = state_dict.get("grad_norms", torch.zeros((), dtype=torch.int64)).to(self.device)
        self.skipped_steps = state_dict.get("skipped_steps", 0)


class EMA:
    """An exponential moving average of the model's weights and buffers, updated after each optimizer step.

    In the file: `ema_state_dict` holds the weights under the model's own key names (no `module.` prefix), so
    `model.load_state_dict(ckpt["ema_state_dict"])` works in any script; `ema_updates` beside it counts updates.
    """

    FIELDS = ("ema_state_dict", "ema_updates")

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def drop_modules(self, names: list[str], like: torch.nn.Module) -> None:
        """Drop what a phase drops from the model. AveragedModel pairs tensors by position: check that the
        names still pair one to one, so the average never mixes two parameters."""
        for name in names:
            if hasattr(self.module, name):
                delattr(self.module, name)
        mine, theirs = (list(dict(m.named_parameters()) | dict(m.named_buffers())) for m in (self.module, like))
        if mine != theirs:
            raise RuntimeError(f"the EMA copy no longer pairs with the model by name: {sorted(set(mine) ^ set(theirs))[:5]}")

    def state_dict(self) -> dict:
        return {"ema_state_dict": self.module.state_dict(), "ema_updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(state_dict["ema_state_dict"])
        # AveragedModel copies the model on its first update (n_averaged == 0), then averages
        self.averaged.n_averaged.fill_(state_dict["ema_updates"])


class RNG:
    """The global RNGs (python, numpy, torch, CUDA) as one entry, restored last. numpy's state is converted to
    plain values and a tensor: its ndarray would not load with weights_only=True. In a several-process job the
    file holds every rank's states (`ranks`, rank 0's also at the top): each rank gets its own back when the
    job resumes on as many processes; on another number they cannot be matched up, which the log says."""

    def state_dict(self) -> dict:
        own = self.own_state()
        if not distributed.current().enabled:
            return own
        return {**own, "ranks": distributed.gather(own)}

    def load_state_dict(self, state_dict: dict) -> None:
        dist, ranks = distributed.current(), state_dict.get("ranks")
        if ranks is not None and len(ranks) == dist.world:
            state_dict = ranks[dist.rank]
        elif ranks is not None or dist.enabled:
            saved = len(ranks) if ranks is not None else 1
            if dist.main:
                logging.getLogger(__name__).warning(
                    "The checkpoint was written by %d process(es), this job has %d: the data order and position "
                    "continue exactly, but the random numbers (dropout masks) are rank 0's, not bit-exact.",
                    saved, dist.world)
        self.load_own(state_dict)

    @staticmethod
    def own_state() -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    @staticmethod
    def load_own(state_dict: dict) -> None:
        random.setstate(state_dict["python"])
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict["cuda"]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
