"""The run object: what the recipe's steps work with. `Run.state` is the one training state (project/state.py):
what a checkpoint holds and a resume restores; every other field is rebuilt from the config at every start.

The entries of `state` are read through typed properties (`run.progress`, `run.optimizer`, ...): each is a view
of the registry, never a second copy, so saving and restoring `state` covers them. Only set-up (registering an
entry, a phase's new optimizer and scheduler) writes to `state`."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from project.checkpoints import files as checkpoint
from project.loggers import NullTracker
from project.nonfinite import NonFiniteGuard
from project.runtime import StopRequest
from project.state import EMA, Progress, TrainMeter
from project.config_checks import AUTOCAST_DTYPES


@dataclass
class Run:
    """What the loop works with. `state` is what a checkpoint holds and a resume restores; everything else is
    rebuilt from the config at every start."""

    cfg: DictConfig
    config: dict                   # cfg resolved, as saved in checkpoints
    overrides: list                # the command-line overrides that give cfg (resume=full recomposes from them)
    run_dir: Path
    device: torch.device
    data: dict
    schedule: list                 # the phases (project/phases.py)
    final: object                  # the last phase's objective: its metric decides best_model.pth
    full_counts: dict              # parameters per top-level module, before any phase dropped one
    state: dict = field(default_factory=dict)  # the one training state, in load order (project/state.py)
    choices: dict = field(default_factory=dict)  # the config-group choices that give cfg ({"model": "unet", ...})
    family: dict | None = None   # lineage.json's fixed part: where this run dir comes from
    phase: dict | None = None
    objective: object = None
    net: torch.nn.Module | None = None   # what the step calls: the model, DDP-wrapped and compiled as configured
    ddp: torch.nn.Module | None = None   # the DDP wrapper of a several-process job (for no_sync)
    guard: NonFiniteGuard | None = None
    stop: StopRequest | None = None
    writer: checkpoint.BackgroundWriter = field(default_factory=checkpoint.BackgroundWriter)
    loaders: dict = field(default_factory=dict)  # "train", "val": one RunLoader each for the whole run
    last_saved: tuple | None = None       # (path, epoch) of the newest checkpoint, for the divergence message
    provenance: dict = field(default_factory=dict)  # this start's code and versions: each checkpoint's summary key
    profiler: object = None               # trainer.profiler.enabled: project/profiling.StepProfiler
    perf: object = None                   # the epochs' throughput (project/throughput.Throughput), never saved

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def num_workers(self) -> int:
        return self.data.get("num_workers", 0)

    @property
    def autocast_dtype(self):
        return AUTOCAST_DTYPES[str(self.cfg.trainer.precision)]

    @property
    def validates_ema(self) -> bool:
        return self.ema is not None and bool(self.cfg.trainer.ema.validate)

    @property
    def validated_model(self) -> torch.nn.Module:
        """The eager weights validation scores: the EMA copy (trainer.ema.validate) or the model."""
        return self.ema.module if self.validates_ema else self.model

    # the entries of the one training state, as typed views of `state`

    @property
    def model(self) -> torch.nn.Module:
        """The eager model: its state_dict never holds `_orig_mod.` keys (`net` is what the step calls)."""
        return self.state["model"]

    @property
    def ema(self) -> EMA | None:
        """The EMA copy of the weights; None when trainer.ema.decay is off."""
        return self.state.get("ema")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state["optimizer"]

    @property
    def scheduler(self):
        return self.state["scheduler"]

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.state["scaler"]

    @property
    def progress(self) -> Progress:
        return self.state["progress"]

    @property
    def train_meter(self) -> TrainMeter:
        return self.state["train_meter"]

    @property
    def tracker(self) -> NullTracker:
        """The run's tracker (W&B, metrics.csv; project/loggers.py); a NullTracker on ranks other than 0."""
        return self.state["tracker"]
