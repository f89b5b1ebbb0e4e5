"""Checkpoints this framework did not write: a bare state dict, a dict from the user's own training script
(`{"epoch": 92, "model_state_dict": ..., "optimizer_state_dict": ..., "best_f_score": 0.6889}`), a .safetensors
file, keys prefixed by DDP (`module.`), torch.compile (`_orig_mod.`) or Lightning (`model.`).

`normalise()` turns such a file into the layout resume.py reads for our own files, with what it knows (weights,
optimizer state, epoch, best score) and nothing it does not (no config, no RNG, no position in an epoch).
"""
import logging
import math
import numbers

import torch

from project.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "foreign"
WEIGHTS_KEYS = ("model_state_dict", "state_dict", "model", "module", "net")  # tried in this order
PREFIXES = ("module.", "_orig_mod.", "model.")


def is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def find_weights(obj, path, weights_key: str | None) -> tuple[str | None, dict]:
    """(the key that holds the weights, or None for a bare state dict; the weights)."""
    if weights_key:
        if not isinstance(obj, dict) or not is_state_dict(obj.get(weights_key)):
            keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"resume.weights_key={weights_key!r}: {path} has no state dict under that key (its keys: "
                            f"{keys}). Name the key that holds the weights, or leave resume.weights_key=null.")
        return weights_key, obj[weights_key]
    if is_state_dict(obj):
        return None, obj
    for key in WEIGHTS_KEYS if isinstance(obj, dict) else ():
        if is_state_dict(obj.get(key)):
            return key, obj[key]
    keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f"{path} holds no model weights that this framework can find: not a state dict, and none under "
                    f"{', '.join(WEIGHTS_KEYS)} (its keys: {keys}). Name the key with resume.weights_key=NAME.")


def number(value):
    """A plain float or int from a Python, numpy or 0-d tensor number; None otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    return None


def normalise(obj, path, weights_key: str | None, best_key: str) -> dict:
    """A foreign file in our layout: model_state_dict, optimizer_state_dict (or None), epoch, best score.

    `best_key` is the summary key of the metric this run monitors (e.g. best_f_score); another `best_*` number
    is taken when that one is absent, and the log says which."""
    key, weights = find_weights(obj, path, weights_key)
    log.info("%s is not a checkpoint of this framework: took its weights from %s (%d tensors).", path,
             f"key {key!r}" if key else "the file itself (a bare state dict)", len(weights))
    info = obj if isinstance(obj, dict) and key is not None else {}
    optimizer = info.get("optimizer_state_dict", info.get("optimizer"))
    if not (isinstance(optimizer, dict) and "state" in optimizer and "param_groups" in optimizer):
        optimizer = None
    epoch = number(info.get("epoch"))
    bests = {k: number(v) for k, v in info.items() if str(k).startswith("best_") and number(v) is not None}
    best_name = best_key if best_key in bests else next(iter(bests), None)
    return {
        "format": FORMAT, "model_state_dict": weights, "weights_key": key, "optimizer_state_dict": optimizer,
        "epoch": int(epoch) if epoch is not None else 0, "global_step": int(number(info.get("global_step")) or 0),
        "best_score": bests.get(best_name), "best_name": best_name, "best_epoch": int(epoch or 0),
        "monitor": None, "config": None, "lineage": [], "early_stopping": {}, "batch_in_epoch": 0,
        "stored_epoch": epoch, "history_epochs": history_length(info.get("history")),
    }


def history_length(history) -> int | None:
    """How many epochs a file's `history` (a dict of per-epoch lists) covers; None without one."""
    if not isinstance(history, dict) or not history or not all(isinstance(v, (list, tuple)) for v in history.values()):
        return None
    return max(len(v) for v in history.values())


def epoch_words(stored, history_epochs: int | None) -> str:
    """A foreign file's epoch with its convention said: the number is the file's own count (scripts count from
    0 or from 1), taken here as the epochs done; its history, where it has one, says how many there were."""
    seen = (f"{history_epochs} epoch{'s' if history_epochs != 1 else ''} in its history" if history_epochs
            else "no history to say whether it counts from 0 or 1")
    return f"epoch {stored} as stored by the file (its own count; {seen})"


def strip_prefixes(weights: dict, model_keys) -> tuple[dict, list[str]]:
    """Strip `module.`, `_orig_mod.`, `model.` (in any nesting) while that makes more keys match the model."""
    model_keys, stripped = set(model_keys), []
    while True:
        best = (sum(k in model_keys for k in weights), None, weights)
        for prefix in PREFIXES:
            candidate = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
            matches = sum(k in model_keys for k in candidate)
            if matches > best[0]:
                best = (matches, prefix, candidate)
        if best[1] is None:
            return weights, stripped
        stripped.append(best[1])
        weights = best[2]


def fits_optimizer(saved: dict, optimizer) -> str | None:
    """Why a foreign optimizer state cannot be loaded into `optimizer` (None: it fits): same number of groups and
    parameters, and each parameter's state tensors shaped like the parameter."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_count = sum(len(g["params"]) for g in saved["param_groups"])
    if len(saved["param_groups"]) != len(optimizer.param_groups) or saved_count != len(params):
        return (f"it has {len(saved['param_groups'])} parameter groups with {saved_count} parameters, the optimizer "
                f"built now has {len(optimizer.param_groups)} with {len(params)}")
    order = [i for g in saved["param_groups"] for i in g["params"]]
    for param, index in zip(params, order):
        for name, value in saved["state"].get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return f"its {name} for parameter {index} is shaped {tuple(value.shape)}, the parameter {tuple(param.shape)}"
    return None
