"""Opening any checkpoint file, the one way every command does it: ours (checked, a v1 file upgraded), a dict
or bare state dict another script wrote, a .safetensors (normalised by foreign.py into our layout).

    opened = open_checkpoint(path, cfg=cfg)                         # resume: the run's config
    opened = open_checkpoint(path, overrides=["loss.metric=image_f1"])  # load_model, evaluate, inspect, ...
    opened.state        # the dict in our layout (resume.Continuation.checkpoint, load()'s `saved`)
    opened.ours         # written by this framework
    opened.cfg          # the config its model and objective come from
    opened.best         # the stored best: {"name": ..., "score": ...}
    opened.weights()    # (which weights, the state dict): the validated ones, or --ema on / off

The stored best of another script's file is read under the key of the objective the config names (objectives.py:
loss.metric=dataset_f1 -> best_f_score, image_f1 -> best_image_f_score), never a fixed key, so every command
reports the same number for the same file and config. Files are read by files.read only.
"""
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from project import phases
from project.config_dir import compose
from project.checkpoints import files
from project.checkpoints import foreign
from project.checkpoints.foreign import FORMAT as FOREIGN
from project.errors import UserError


@dataclass(frozen=True)
class Opened:
    """One checkpoint file, opened (see open_checkpoint)."""

    path: Path
    state: dict    # our layout: a file of ours as checked, another script's as foreign.normalise() gives it
    ours: bool     # written by this framework
    raw: object    # what the file holds, as read (another script's keys, for inspect)
    composed: object = None   # another script's file: the config its stored best was taken by
    overrides: tuple = ()

    @cached_property
    def cfg(self):
        """The config its model and objective come from: ours, the config it was trained with, the dotted
        overrides (data.root=..., not a group choice) on top; another script's, the one it was opened with."""
        return own_config(self.state, self.overrides) if self.ours else self.composed

    @property
    def best(self) -> dict:
        return stored_best(self.state)

    def weights(self, ema: str = "auto", weights_key: str | None = None) -> tuple[str, dict]:
        """--ema auto: the weights that were validated (validated_weights); on / off: the EMA copy or not."""
        if ema == "auto" or weights_key:
            return validated_weights(self.state, weights_key)
        if ema == "on":
            if self.state.get("ema_state_dict") is None:
                raise UserError("--ema on, but the checkpoint holds no EMA weights (trainer.ema.decay was off). Use "
                                "--ema auto or off.")
            return "ema", self.state["ema_state_dict"]
        if ema == "off":
            return "model", self.state["model_state_dict"]
        raise UserError(f"--ema {ema} is unknown: use auto (the validated weights), on or off.")


def open_checkpoint(path, cfg=None, overrides=(), weights_key: str | None = None) -> Opened:
    """Read `path` (files.read: safe, every failure a UserError) and bring it into our layout.

    For another script's file the stored best is taken under the key of `cfg`'s objective; without `cfg`, of the
    config the `overrides` compose as run.py would (composed only for such a file). `weights_key` names where its
    weights are (resume.weights_key; None: found by foreign.find_weights)."""
    path = Path(path)
    raw = files.read(path)
    if files.is_ours(raw):
        return Opened(path, files.check(path, raw), True, raw, overrides=tuple(overrides))
    cfg = cfg if cfg is not None else compose(list(overrides))
    return Opened(path, foreign.normalise(raw, path, weights_key, best_key(cfg)), False, raw, cfg, tuple(overrides))


def own_config(state: dict, overrides=()):
    """A file of ours: the config it was trained with, the dotted overrides on top."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(state["config"])
    dotted = [o for o in overrides if "=" in o and "." in o.split("=")[0]]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotted)) if dotted else cfg


def best_key(cfg) -> str:
    """The checkpoint key under which the objective of `cfg` (its last phase's) stores its best."""
    return phases.build_objective(cfg, phases.schedule_phases(cfg)[-1]).keys["best"]


def stored_best(state: dict) -> dict:
    """What a checkpoint (in our layout) stores as its best: ours, the metric its run monitored; another script's,
    the key it was found under (see open_checkpoint). The score is None when the file stores none."""
    name = state.get("best_name") if state.get("format") == FOREIGN else state.get("monitor")
    return {"name": name, "score": state.get("best_score")}


def validated_weights(saved: dict, weights_key: str | None = None) -> tuple[str, dict]:
    """The weights a checkpoint's scores came from: the EMA copy when its run validated with it, or the key the
    user named (resume.weights_key)."""
    if saved.get("format") == FOREIGN:  # its weights were found (or picked by resume.weights_key) when read
        return saved["weights_key"] or "state dict", saved["model_state_dict"]
    if weights_key:
        if weights_key not in saved:
            raise UserError(f"resume.weights_key={weights_key!r} is not in the checkpoint; it holds "
                            "model_state_dict" + (" and ema_state_dict" if "ema_state_dict" in saved else "") + ".")
        return weights_key, saved[weights_key]
    if saved.get("validated_weights") == "ema" and saved.get("ema_state_dict") is not None:
        return "ema", saved["ema_state_dict"]
    return "model", saved["model_state_dict"]
