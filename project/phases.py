"""A training schedule is a list of phases, declared in conf/schedule/*.yaml.

A phase has a name, a length in epochs (the last phase runs until trainer.max_epochs), an objective (null = the
`loss` group), modules it drops on entry (e.g. SimMIM's decoder before fine-tuning), optimizer and scheduler
overrides merged onto the `optimizer`/`scheduler` groups, and its own early stopping (ending a phase early
starts the next one). Entering a phase rebuilds the optimizer and scheduler; optimizer state of parameters
that remain is carried over by parameter name.
"""
import fnmatch
import functools

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from project.errors import UserError


def schedule_phases(cfg: DictConfig) -> list[dict]:
    """The phases with their planned epoch ranges [start, end)."""
    phases, start = [], 0
    items = list(cfg.schedule.phases.items())
    for i, (key, p) in enumerate(items):
        last = i == len(items) - 1
        epochs = p.get("epochs")
        if not last and (epochs is None or epochs < 1):
            raise UserError(f"schedule.phases.{key}.epochs={epochs!r}: every phase but the last needs a length "
                            "of at least 1 epoch (the last one runs until trainer.max_epochs).")
        end = cfg.trainer.max_epochs if last else start + epochs
        if end <= start:
            raise UserError(
                f"trainer.max_epochs={cfg.trainer.max_epochs} leaves no epoch for the last phase {key!r}, which "
                f"would start at epoch {start + 1}. Raise trainer.max_epochs above {start}, or shorten the "
                "earlier phases.")
        phases.append({"key": key, "name": p.get("name") or key, "index": i, "start": start, "end": end,
                       "epochs": epochs, "last": last, "objective": p.get("objective"),
                       "drop_modules": list(p.get("drop_modules") or []),
                       "optimizer": p.get("optimizer") or {}, "scheduler": p.get("scheduler") or {},
                       "early_stopping": OmegaConf.merge(cfg.trainer.early_stopping, p.get("early_stopping") or {})})
        start = end
    return phases


def plan_text(phases: list[dict], current: int = 0, current_start: int | None = None) -> str:
    lines = ["Training plan:"]
    for p in phases:
        start = current_start if p["index"] == current and current_start is not None else p["start"]
        length = "until trainer.max_epochs" if p["last"] else f"{p['epochs']} epochs"
        mark = "  <- now" if p["index"] == current else ""
        drops = f", drops {', '.join(p['drop_modules'])}" if p["drop_modules"] else ""
        lines.append(f"  {p['index'] + 1}. {p['name']}: epochs {start + 1}-{p['end']} ({length}{drops}){mark}")
    return "\n".join(lines)


def dropped_before(phases: list[dict], index: int) -> list[str]:
    """Modules removed by the phases up to and including `index`."""
    return [m for p in phases[: index + 1] for m in p["drop_modules"]]


def drop_modules(model: nn.Module, names: list[str]) -> list[str]:
    dropped = []
    for name in names:
        if hasattr(model, name):
            delattr(model, name)
            dropped.append(name)
    return dropped


def components_table(model: nn.Module, counts: dict[str, int], dropped: list[str]) -> str:
    """Parameters per top-level module of the model as built, and whether this phase trains them."""
    present = {name for name, _ in model.named_children()} | {n.split(".")[0] for n, _ in model.named_parameters()}
    rows = [("module", "parameters", "status")]
    for name, n in counts.items():
        rows.append((name, f"{n:,}", "active" if name in present else "dropped"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows)


def module_counts(model: nn.Module) -> dict[str, int]:
    counts = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + p.numel()
    return counts


def build_optimizer(cfg: DictConfig, phase: dict, model: nn.Module, lr_from_config: bool = False):
    """The phase's optimizer over the model's trainable parameters, by name (torch keeps `param_names` in each
    param group of its state dict).

    Loading a saved state into it follows parameter names, then re-applies the config's values: torch's
    load_state_dict replaces every param-group value (lr, weight_decay, betas) with the saved one, and a user
    who lowers the weight decay and resumes must get the new value. The LR is left to the scheduler unless
    `lr_from_config` (the config changed it; ReduceLROnPlateau keeps its reduced LR in the optimizer).
    """
    node = OmegaConf.merge(cfg.optimizer, phase["optimizer"])
    optimizer = instantiate(node)([(n, p) for n, p in model.named_parameters() if p.requires_grad])
    configured = [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in optimizer.param_groups]
    optimizer.register_load_state_dict_pre_hook(_follow_names)
    optimizer.register_load_state_dict_post_hook(
        functools.partial(_reapply_config, configured=configured, lr_from_config=lr_from_config))
    return optimizer


def param_names(optimizer) -> list[str]:
    return [n for g in optimizer.param_groups for n in g["param_names"]]


def _follow_names(optimizer, state_dict: dict) -> dict | None:
    """load_state_dict pre-hook: re-key the saved per-parameter state so each parameter gets its own (torch's
    loading is positional)."""
    names = param_names(optimizer)
    saved_names = [n for g in state_dict["param_groups"] for n in g.get("param_names", [])]
    if not saved_names or saved_names == names:
        return None
    index = {name: i for i, name in enumerate(saved_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"The checkpoint's optimizer state has no entry for {missing[:5]}; the model's parameters "
                        "changed since it was written. Use resume=reset_optimizer.")
    state = {i: state_dict["state"][index[n]] for i, n in enumerate(names) if index[n] in state_dict["state"]}
    groups, offset = [], 0
    for group, saved in zip(optimizer.param_groups, state_dict["param_groups"]):
        size = len(group["params"])
        groups.append({**saved, "params": list(range(offset, offset + size)),
                       "param_names": names[offset:offset + size]})
        offset += size
    return {"state": state, "param_groups": groups}


def _reapply_config(optimizer, configured: list[dict], lr_from_config: bool) -> None:
    """load_state_dict post-hook: the config's hyperparameters win over the saved ones (see build_optimizer)."""
    for group, values in zip(optimizer.param_groups, configured):
        for key, value in values.items():
            if key not in ("lr", "initial_lr") or lr_from_config:
                group[key] = value


def build_scheduler(cfg: DictConfig, phase: dict, optimizer, length: int):
    node = OmegaConf.merge(cfg.scheduler, phase["scheduler"])
    if "max_epochs" in node:  # a schedule's horizon is its phase, not the whole run
        node.max_epochs = length
    return instantiate(node)(optimizer)


def build_objective(cfg: DictConfig, phase: dict):
    return instantiate(phase["objective"] if phase["objective"] is not None else cfg.loss)


def carry_state(old, new) -> int:
    """Copy per-parameter optimizer state (Adam moments, momentum) for parameters in both, by name."""
    if old is None or type(old) is not type(new):
        return 0
    by_name = dict(zip(param_names(old), [p for g in old.param_groups for p in g["params"]]))
    carried = 0
    for name, param in zip(param_names(new), [p for g in new.param_groups for p in g["params"]]):
        old_param = by_name.get(name)
        if old_param is not None and old_param in old.state:
            new.state[param] = old.state[old_param]
            carried += 1
    return carried


def check_compatible(saved_phases: list[dict], phases: list[dict], phase_index: int, epoch: int) -> None:
    """resume=full may extend the last phase or change phases not yet begun, never the ones already run."""
    for old in saved_phases[: phase_index + 1]:
        new = next((p for p in phases if p["key"] == old["key"]), None)
        if new is None or new["index"] != old["index"]:
            raise UserError(
                f"The checkpoint (epoch {epoch}) was trained with phase {old['key']!r} as phase {old['index'] + 1}, "
                f"but the current schedule {'has no such phase' if new is None else 'moves it'}. Use the "
                "checkpoint's schedule (see its config), or resume=reset_optimizer to start the new schedule "
                "from its weights.")
        for field in ("epochs", "drop_modules", "objective"):
            if not old["last"] and old[field] != new[field] or field != "epochs" and old[field] != new[field]:
                raise UserError(
                    f"resume=full would reinterpret finished epochs: phase {old['key']!r} {field} was "
                    f"{old[field]!r} in the checkpoint (epoch {epoch}) and is {new[field]!r} now. Restore "
                    f"{old[field]!r} (e.g. schedule.phases.{old['key']}.{field}=...), or use "
                    "resume=reset_optimizer to start a new run from these weights.")


def key_matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
