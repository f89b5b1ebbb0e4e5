"""The run object: what the recipe's steps work with. `Run.state` is the one training state (project/state.py):
what a checkpoint holds and a resume restores; every other field is rebuilt from the config at every start."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from project.checkpoints import files as checkpoint
from project.nonfinite import NonFiniteGuard
from project.runtime import StopRequest
from project.validate import AUTOCAST_DTYPES


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
    model: torch.nn.Module         # the eager model: its state_dict never holds `_orig_mod.` keys
    full_counts: dict              # parameters per top-level module, before any phase dropped one
    state: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)  # the config-group choices that give cfg ({"model": "unet", ...})
    family: dict | None = None     # where this run dir comes from: lineage.json's fixed part (results/lineage.py)
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
        return "ema" in self.state and bool(self.cfg.trainer.ema.validate)
