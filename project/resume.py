"""Where a run continues from, and what it takes from there.

resume=full            the checkpoint's weights, optimizer, scheduler, counters, best score, early stopping and
                       RNG; the run goes on as if it had never stopped. New config values are applied and shown.
resume=reset_optimizer weights only; optimizer, scheduler, epochs, best score and early stopping start fresh
                       from the current config.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from project import phases
from project.checkpoints import files as checkpoint
from project.checkpoints import foreign, resolve
from project.checkpoints.foreign import FORMAT as FOREIGN
from project.checkpoints.opening import open_checkpoint, validated_weights
from project.errors import UserError
from project.rundirs.reading import flatten
from project.state import RESTORES
from project.config_checks import check_config

log = logging.getLogger(__name__)

# In a full resume these may change; any other model.* value would change the network the weights belong to.
MODEL_KEYS_SAFE_TO_CHANGE = {"model.dropout"}


def load_newest_intact(path: Path) -> tuple[Path, dict]:
    """Load `path`; if it is broken (truncated, corrupt), say so and use the newest checkpoint of the same run
    that loads. Never a broken file, never silently an older one."""
    try:
        return path, checkpoint.load(path)
    except UserError as error:
        log.warning("%s", error)
        others = sorted((p for p in path.parent.glob("*.pth") if p != path), key=lambda p: p.stat().st_mtime,
                        reverse=True)
        for other in others:
            try:
                state = checkpoint.load(other)
            except UserError as e:
                log.warning("%s", e)
                continue
            log.warning("%s is unreadable: continuing from %s (epoch %d, step %d) instead, the newest intact "
                        "checkpoint of this run.", path.name, other, state["epoch"], state["global_step"])
            return other.resolve(), state
        raise


def override_key(override: str) -> str:
    """'model.dropout=0.2' -> 'model.dropout'; '+experiment=x' -> 'experiment'; '~trainer.x' -> 'trainer.x'."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(saved: list[str], typed: list[str]) -> list[str]:
    """The checkpoint's command-line overrides, then the ones typed now; a key typed now replaces the saved one.
    The saved run's resume choice is not inherited (this run's resume=full is)."""
    typed_keys = {override_key(o) for o in typed}
    merged = {override_key(o): o for o in saved if not override_key(o).startswith(("resume", "hydra."))
              # a group chosen now (model=unet) drops the saved values inside the old choice (model.embed_dims)
              and not any(override_key(o).startswith(f"{k}.") for k in typed_keys)}
    merged.update({override_key(o): o for o in typed})
    return list(merged.values())


def config_changes(old: dict, new: dict) -> dict:
    """{dotted key: (checkpoint value, current value)} for every value that differs, resume.* excluded."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith("resume.")}


SPLIT_KEYS = ("data.root", "data.val_fraction", "data.val_list", "data.split_seed", "data.images_dir", "data.masks_dir")


SWITCH_EFFECTS = {  # the GPU switches: (effect when turned on or set, effect when turned off / null)
    "trainer.benchmark": ("applied: cuDNN autotuning; GPU runs are no longer bit-exact on resume (the CPU still is)",
                          "applied: cuDNN autotuning off"),
    "trainer.deterministic": ("applied: deterministic algorithms only; an op without one stops the run",
                              "applied: non-deterministic GPU kernels allowed (GPU resumes may differ in the last bits)"),
    "trainer.channels_last": ("applied: channels-last memory layout; same weights (checkpoints keep the standard "
                              "layout), results equal within float tolerance", "applied: standard memory layout; same "
                              "weights, results equal within float tolerance"),
    "trainer.float32_matmul_precision": ("applied: float32 matmuls at lower precision on GPUs (TF32 or bf16); "
                                         "results differ slightly from the checkpoint's run",
                                         "applied: float32 matmuls at torch's default (highest) precision"),
}


def effect(key: str, mode: str, new=None) -> str:
    """What changing `key` (to `new`) does to the run that continues."""
    if key in SWITCH_EFFECTS:
        on, off = SWITCH_EFFECTS[key]
        if key == "trainer.deterministic" and new == "warn":
            return "applied: deterministic algorithms; ops without one warn and run non-deterministically"
        if key == "trainer.float32_matmul_precision" and new == "highest":
            return off
        return on if new else off
    if key == "loss.metric":
        return "applied: another metric, so the best score starts afresh (best_model.pth is replaced by the next)"
    if key in SPLIT_KEYS:
        return "applied: other validation images, scores not comparable with the checkpoint's"
    if mode == "reset_optimizer":
        return "applied"
    if key.startswith("optimizer.") or ".optimizer." in key:
        return "applied over the restored optimizer state"
    if key == "trainer.max_epochs":
        return "applied: the schedule is recomputed for the new length"
    return "applied"


def changes_table(changes: dict, mode: str) -> str:
    rows = [("parameter", "checkpoint", "now", "effect")]
    rows += [(k, repr(old), repr(new), effect(k, mode, new)) for k, (old, new) in changes.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Continuation:
    """What this run continues from, decided once before anything is built (see decide())."""

    mode: str                  # "full" or "reset_optimizer"
    path: Path                 # the checkpoint file
    checkpoint: dict           # its contents (v2 layout)
    cfg: DictConfig            # the config this run has: for resume=full the continued run's, plus what was typed
    config: dict               # the same, resolved, as saved in the new checkpoints
    overrides: list[str]       # the command-line overrides that give `cfg`
    changes: dict              # {key: (checkpoint value, now)}
    is_own: bool               # a requeued or restarted job continuing its own run dir
    finished: bool = False     # is_own and nothing left to do
    restores: frozenset = frozenset()  # the training-state entries loaded from the file (state.RESTORES)
    choices: dict | None = None  # resume=full: the continued run's config-group choices (None: this run's own)

    @property
    def foreign(self) -> bool:
        """A checkpoint another script wrote (project/foreign.py): no config, RNG or data position in it."""
        return self.checkpoint["format"] == FOREIGN

    @property
    def lr_from_config(self) -> bool:
        """A changed LR is applied over the restored optimizer state; otherwise the saved one is kept. A foreign
        file has no config to compare with: the current config's LR applies."""
        return self.foreign or any(k.endswith(".lr") and k.startswith(("optimizer.", "schedule.")) for k in self.changes)

    @property
    def lineage_entry(self) -> dict:
        c = self.checkpoint
        return {"path": str(self.path), "sha256": checkpoint.sha256(self.path), "mode": self.mode,
                "epoch": c["epoch"], "global_step": c["global_step"], "monitor": c.get("monitor"),
                "best_score": c.get("best_score"), "changed": {k: list(v) for k, v in self.changes.items()},
                **({"epoch_note": foreign.epoch_words(c["epoch"], c.get("history_epochs"))} if self.foreign else {})}

    @property
    def phase(self) -> tuple[int, int]:
        """(phase index, the epoch it began at) to build the run in: the checkpoint's for a full resume."""
        if self.mode == "full":
            return self.checkpoint.get("phase_index", 0), self.checkpoint.get("phase_start", 0)
        return 0, 0


# Checkpoints record the run's config-group choices since the default model became unet; a run saved before
# that was composed when the default model was microsegformer.
LEGACY_CHOICES = {"model": ("microsegformer", "project.models.MicroSegFormer")}


def recompose(saved: dict, typed: list[str]) -> tuple[DictConfig, list[str], dict]:
    """resume=full: the config the checkpoint's run had, then what was typed now: its group choices and
    overrides give the structure, its saved values every key not typed now (so a default changed since, e.g.
    optimizer.lr, does not change a run that is being continued). Returns (cfg, overrides, choices). Needs
    Hydra's global state, as run.py has it."""
    from hydra import compose

    overrides = merge_overrides(saved.get("overrides", []), typed)
    config = saved.get("config") or {}  # none in a file another script wrote
    choices = dict(saved.get("choices") or legacy_choices(config))
    chosen = {override_key(o) for o in overrides}
    choices.update({override_key(o): o.split("=", 1)[1] for o in typed if "." not in override_key(o) and "=" in o})
    pinned = [f"{g}={c}" for g, c in choices.items() if g not in chosen and g != "resume"]
    try:
        cfg = compose(config_name="config", overrides=pinned + overrides)
    except Exception as e:  # e.g. a saved override that no longer fits the config groups
        raise UserError(f"Could not rebuild the configuration of the run being continued from its overrides "
                        f"{pinned + overrides}: {e}. Pass the values you want explicitly, or use "
                        "resume=reset_optimizer.") from None
    keep_saved_values(cfg, config, {override_key(o) for o in typed} | {"resume"})
    # the groups its overrides chose (a file saved before choices were recorded: logger=csv) are choices too
    choices.update({override_key(o): o.split("=", 1)[1] for o in overrides
                    if "=" in o and "." not in override_key(o) and not o.startswith(("~", "hydra"))})
    return cfg, overrides, choices


def legacy_choices(config: dict) -> dict:
    """The choices of a run saved before checkpoints recorded them, where today's default differs."""
    return {group: option for group, (option, target) in LEGACY_CHOICES.items()
            if config.get(group, {}).get("_target_") == target}


def keep_saved_values(node: DictConfig, saved: dict, typed: set[str], prefix: str = "") -> None:
    """Set every value of `node` that was not typed now to the saved one. Interpolations stay (they follow the
    values they name: scheduler.max_epochs follows a new trainer.max_epochs); keys added since keep today's
    default; keys removed since come back."""
    for key, value in saved.items():
        path = prefix + key
        if path in typed:
            continue
        if key not in node:
            with open_dict(node):
                node[key] = value
        elif OmegaConf.is_interpolation(node, key):
            continue
        elif isinstance(node[key], DictConfig) and isinstance(value, dict):
            keep_saved_values(node[key], value, typed, path + ".")
        else:
            node[key] = value


def decide(cfg, run_dir: Path, search_dirs: list[Path], typed: list[str] | None) -> Continuation | None:
    """Pick, load and check the checkpoint this run continues from; None for resume=none.

    `typed`: the overrides typed now; with them a full resume recomposes the continued run's config (None: use
    `cfg` as it is). Raises UserError on anything wrong, before a file is written. A run dir that already
    holds checkpoints/last.pth continues from it, whatever resume= says.
    """
    mode = cfg.resume.mode
    own = run_dir / "checkpoints" / "last.pth"
    is_own = own.exists()
    if is_own:  # a requeued or restarted job in its own run dir: continue it, whatever resume= says
        mode, path = "full", own.resolve()
        log.info("Resuming (full) from this run's own %s (a requeued or restarted job)", path)
    elif mode == "none":
        return None
    elif mode not in resolve.FILE_FOR_MODE:
        raise UserError(f"resume.mode={mode!r} is unknown: use resume=none, resume=full or resume=reset_optimizer.")
    else:
        path = resolve.for_resume(str(cfg.resume.checkpoint), mode, search_dirs, exclude=run_dir).resolve()
        log.info("Resuming (%s) from %s", mode, path)
    # a file we picked from a run dir may fall back to the newest intact one; a file the user named must load
    if is_own or (mode == "full" and not str(cfg.resume.checkpoint).endswith(".pth")):
        path, saved = load_newest_intact(path)
    else:
        saved = open_checkpoint(path, cfg=cfg, weights_key=cfg.resume.get("weights_key")).state
    foreign = saved["format"] == FOREIGN
    overrides, choices = list(typed or []), None
    if mode == "full" and typed is not None:
        # continue the run as it was configured (its overrides, then what was typed now), also on a requeue
        cfg, overrides, choices = recompose(saved, typed)
        check_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    changes = {} if foreign else config_changes(saved["config"], config)
    if foreign:
        check_foreign(saved, mode, cfg, path)
    else:
        check_trusted(saved, cfg, typed, choices, path)
        check_same_model(saved, config, path, cfg, search_dirs, is_own)
    finished = mode == "full" and check_can_continue(saved, changes, cfg.trainer.max_epochs, path, is_own)
    if mode == "full" and not foreign:
        phases.check_compatible(phases.schedule_phases(OmegaConf.create(saved["config"])), phases.schedule_phases(cfg),
                                saved["phase_index"], saved["epoch"])
    if finished:
        log.info("This run already finished (epoch %d); nothing to do.", saved["epoch"])
    elif changes:
        log.info("Config values that differ from the checkpoint:\n%s", changes_table(changes, mode))
    elif foreign:
        log.info("The checkpoint has no config of this framework to compare with: the current config applies.")
    else:
        log.info("Config identical to the checkpoint's.")
    return Continuation(mode=mode, path=path, checkpoint=saved, cfg=cfg, config=config, overrides=overrides,
                changes=changes, is_own=is_own, finished=finished, restores=frozenset(RESTORES[mode]),
                choices=choices)


def check_foreign(saved: dict, mode: str, cfg, path: Path) -> None:
    """A foreign file: full needs its optimizer state; the run continues in the phase its epoch falls in."""
    if mode == "full" and saved["optimizer_state_dict"] is None:
        raise UserError(
            f"resume=full keeps the optimizer state, but {path} has none (no optimizer_state_dict or optimizer "
            "with state and param_groups). Start from its weights with a fresh optimizer: resume=reset_optimizer.")
    if mode == "full":
        plan = phases.schedule_phases(cfg)
        phase = next((p for p in plan if p["end"] > saved["epoch"]), plan[-1])
        saved.update(phase_index=phase["index"], phase_start=phase["start"])


def check_trusted(saved: dict, cfg, typed: list[str] | None, choices: dict | None, path: Path) -> None:
    """Every class the file's config names, and every class the continuation builds (the recomposed config of a
    full resume), is this installation's or typed now (project/checkpoints/trust.py), checked before anything is
    built. resume.trust_config=true accepts the file's own, logged."""
    from project.checkpoints import trust

    accept, opt_in = "warn" if cfg.resume.get("trust_config") else None, "resume.trust_config=true"
    trust.check_targets(saved["config"], trust.recorded_choices(saved), typed, str(path), opt_in, accept)
    if choices is not None:
        trust.check_targets(cfg, choices, typed, str(path), opt_in, accept)


def check_same_model(saved: dict, config: dict, path: Path, cfg, search_dirs, is_own: bool) -> None:
    old_model, new_model = saved["config"].get("model", {}), config["model"]
    if old_model.get("_target_") == new_model.get("_target_"):
        return
    picked_by = ""
    if str(cfg.resume.checkpoint) == "latest" and not is_own:
        # `latest` is the newest run of any model: the user may have meant an older run of this one
        picked_by = f" (resume.checkpoint=latest picked it: the newest run under {' or '.join(map(str, search_dirs))})"
    raise UserError(
        f"The checkpoint {path}{picked_by} holds a {old_model.get('_target_')} but "
        f"model={new_model['_target_']} was asked for. Choose the checkpoint's model (model=... matching "
        f"{old_model.get('_target_')}), or name the run you mean: resume.checkpoint=<run dir or .pth>.")


def check_can_continue(saved: dict, changes: dict, max_epochs: int, path: Path, is_own: bool) -> bool:
    """resume=full: refuse what cannot continue; True when the job's own run already finished."""
    arch = {k: v for k, v in changes.items() if k.startswith("model.") and k not in MODEL_KEYS_SAFE_TO_CHANGE}
    if arch:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in arch.items())
        raise UserError(
            f"resume=full continues the same network, but the architecture changed ({listed}). Restore those "
            "values, or use resume=reset_optimizer to start a new run from these weights.")
    epochs, es = saved["epoch"], saved["early_stopping"]
    done = epochs >= max_epochs and not saved.get("batch_in_epoch")
    stopped = es.get("stopped") and "trainer.early_stopping.patience" not in changes
    if is_own and (done or stopped):  # e.g. a job requeued after its last save: nothing left to do
        return True
    if done:
        raise UserError(
            f"The run in {path} already finished {epochs} of trainer.max_epochs={max_epochs} epochs, so "
            f"resume=full has nothing to do. Raise the target, e.g. trainer.max_epochs={epochs + max(10, epochs // 2)}, "
            "or use resume=reset_optimizer to start a new run from its best weights.")
    if stopped:
        raise UserError(
            f"The run in {path} was ended by early stopping at epoch {epochs} ({es['bad_epochs']}"
            f" epochs without improvement, patience {es['patience']}). Continuing it "
            "would stop again at once: raise trainer.early_stopping.patience (or set it to null), or use "
            "resume=reset_optimizer.")
    return False


def check_weights_fit(model, state_dict: dict, path) -> None:
    """Before a strict load (resume=full): a readable report instead of a wall of keys."""
    report = match_keys(model.state_dict(), state_dict)
    if any(report[k] for k in ("missing", "unexpected", "mismatched")):
        raise UserError(
            f"The weights in {path} do not fit the model built from the current config: {mismatch_summary(report)}. "
            "Use the model settings the checkpoint was trained with (see its config), or another checkpoint.")


def match_keys(own: dict, theirs: dict, ignore=()) -> dict:
    ignored = sorted(k for k in set(own) | set(theirs) if phases.key_matches(k, ignore))
    own = {k: v for k, v in own.items() if k not in ignored}
    theirs = {k: v for k, v in theirs.items() if k not in ignored}
    return {
        "matched": [k for k in own if k in theirs and theirs[k].shape == own[k].shape],
        "missing": [k for k in own if k not in theirs],
        "unexpected": [k for k in theirs if k not in own],
        "mismatched": [f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}" for k in own
                       if k in theirs and theirs[k].shape != own[k].shape],
        "ignored": ignored,
    }


def mismatch_summary(report: dict) -> str:
    def show(keys):
        return f"{len(keys)}" + (f" ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else "")
    return (f"missing {show(report['missing'])}, unexpected {show(report['unexpected'])}, "
            f"shape-mismatched {show(report['mismatched'])} (checkpoint vs now)")


def load_matching_weights(model, saved: dict, path, ignore_keys, weights_key: str | None = None) -> None:
    """resume=reset_optimizer: load every weight the checkpoint and the model share, after a matching report.
    The weights are those the checkpoint's run validated (EMA or raw, see validated_weights).

    Missing keys are expected when they belong to modules the checkpoint's run had dropped (a decoder removed
    for fine-tuning): they keep their fresh initialisation. Keys matching resume.ignore_keys are left out on
    purpose. Anything else missing, unexpected or shape-mismatched is an error.
    """
    which, weights = validated_weights(saved, weights_key)
    if saved["format"] == FOREIGN:
        weights, stripped = foreign.strip_prefixes(weights, model.state_dict())
        if stripped:
            log.info("Stripped the key prefix %s from %s: then its keys match the model's.",
                     " and ".join(repr(p) for p in stripped), path)
    report = match_keys(model.state_dict(), weights, ignore_keys)
    dropped = tuple(f"{m}." for m in saved.get("dropped_modules", []))
    expected = [k for k in report["missing"] if k.startswith(dropped)] if dropped else []
    missing = [k for k in report["missing"] if k not in expected]
    log.info("Starting from the %s weights of %s%s.", "EMA" if which == "ema" else "raw" if which == "model" else which,
             path, " (the ones its run validated)" if which in ("ema", "model") else "")
    # the dropped-modules clause only where the checkpoint's run dropped some (never for another script's file)
    why = (f" ({len(expected)} expected: modules {list(saved['dropped_modules'])} were dropped by the checkpoint's "
           "run)") if saved.get("dropped_modules") else ""
    log.info("Parameter matching with %s: %d matched, %d missing%s, %d unexpected, %d shape-mismatched, %d ignored "
             "by resume.ignore_keys", path, len(report["matched"]), len(report["missing"]), why,
             len(report["unexpected"]), len(report["mismatched"]), len(report["ignored"]))
    if missing or report["unexpected"] or report["mismatched"]:
        raise UserError(
            f"The weights in {path} do not fit the model built from the current config: "
            f"{mismatch_summary({**report, 'missing': missing})}. Use the checkpoint's model settings, or leave keys "
            "out on purpose with resume.ignore_keys='[\"pattern.*\"]'.")
    model.load_state_dict({k: weights[k] for k in report["matched"]}, strict=False)
