"""Another script's file never has its normalisation guessed silently.

A file that records no normalisation (another script's) scored under the configured data.mean/data.std may be
scored on inputs its weights never saw: a `/255` script's weights under 0.5/0.25 score far below what they are
worth, and every gain reported against that start is false. So before training, its starting weights are scored
on the first validation batches under the configured normalisation and the common conventions
(normalisation.CONVENTIONS). If one scores better beyond noise (project/noise.py), by at least MIN_GAIN, and the
user did not state data.mean/data.std, the run stops (UserError: exit 2, nothing trained or written) with the
scores and the values to set; stated, it goes on with the table in the log.

The validation batches are normalised once, as configured; each convention's inputs are those batches turned back
into 0-1 pixels and normalised its way, so every candidate sees the same images.
"""
import itertools
import logging
import statistics

import torch

from project import noise
from project.data.normalisation import CONVENTIONS, LEGACY, checked, overrides
from project.errors import UserError

log = logging.getLogger(__name__)

BATCHES = 4  # the first validation batches scored under each candidate
CHUNKS = 5   # scored in this many parts (noise.WINDOW): their spread is the noise a difference must beat
MIN_GAIN = 0.05  # and by at least this much: weights that barely segment (a few hundredths) prove nothing either way


class Batches:
    """What the recipe's validation_pass() reads (loader.epoch(0)): a fixed list of batches."""

    def __init__(self, batches: list[tuple]):
        self.batches = batches

    def epoch(self, _):
        return iter(self.batches)


def renormalised(x: torch.Tensor, was: dict, to: dict) -> torch.Tensor:
    """Model inputs normalised as `was`, normalised as `to` instead: the same pixels on the 0-1 scale."""
    view = lambda values: torch.as_tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1)  # noqa: E731
    return (x * view(was["std"]) + view(was["mean"]) - view(to["mean"])) / view(to["std"])


def candidates(configured: dict, channels: int) -> dict:
    """{label: normalisation}: the configured one first, then each convention that differs from it."""
    found = {f"configured ({overrides(configured)})": configured}
    for label, norm in {"0.5/0.25 (the default)": LEGACY, **CONVENTIONS}.items():
        norm = checked(norm["mean"], norm["std"], channels)
        if norm not in found.values():
            found[label] = norm
    return found


def chunks(loader, limit: int) -> list[tuple]:
    """The first `limit` validation batches, their samples re-cut into up to CHUNKS parts."""
    batches = list(itertools.islice(loader.epoch(0), limit))
    joined = [torch.cat(parts) for parts in zip(*batches)]
    n = min(CHUNKS, len(joined[0]))
    return list(zip(*(torch.tensor_split(t, n) for t in joined)))


def score_table(run, validation_pass) -> tuple[dict, int]:
    """{label: (mean score, spread, normalisation)} for the starting weights, and how many images were scored."""
    data, monitor = run.data, run.objective.monitor
    configured = data["normalisation"]
    model = run.state["ema"].module if run.validates_ema else run.model
    parts = chunks(run.loaders["val"], BATCHES)
    table = {}
    for label, norm in candidates(configured, len(configured["mean"])).items():
        scores = []
        for part in parts:
            batch = (renormalised(part[0], configured, norm), *part[1:])
            val = validation_pass(model, run.objective, Batches([batch]), run.device, data, run.autocast_dtype)
            scores.append(float(val[monitor]))
        table[label] = (statistics.fmean(scores), noise.spread(scores), norm)
    return table, sum(len(p[0]) for p in parts)


def lines(table: dict, monitor: str) -> list[str]:
    return [f"  {label:<55} {monitor} {score:.4f}" + (f" +- {spread:.4f}" if spread is not None else "")
            for label, (score, spread, _) in table.items()]


def better_beyond_noise(table: dict, higher_is_better: bool) -> str | None:
    """The label of the candidate that beats the configured one by more than the noise, the best such; or None."""
    (first, (base, base_spread, _)), *others = table.items()
    sign = 1 if higher_is_better else -1
    best = None
    for label, (score, spread, _) in others:
        gain = sign * (score - base)
        if gain >= MIN_GAIN and noise.within_noise(gain, base_spread, spread) is False:
            if best is None or sign * (score - table[best][0]) > 0:
                best = label
    return best


def check_start(run, plan, typed: list[str], validation_pass) -> None:
    """Before a continuation from another script's file trains: see the module doc. `validation_pass` is the
    recipe's (model, objective, loader, device, data, dtype) -> scores."""
    if plan is None or not plan.foreign or plan.checkpoint.get("normalisation") or "normalisation" not in run.data:
        return
    if run.objective.monitor != run.final.monitor:  # a pretraining phase first: no comparable score (score_start)
        return
    stated = any(o.split("=", 1)[0].lstrip("+~") in ("data.mean", "data.std") for o in typed)
    table, images = score_table(run, validation_pass)
    monitor = run.objective.monitor
    shown = "\n".join(lines(table, monitor))
    winner = better_beyond_noise(table, run.objective.higher_is_better)
    head = (f"The starting weights of {plan.path} (a file that records no normalisation), scored on the first "
            f"{images} validation images under each input normalisation")
    if stated or winner is None:
        log.info("%s:\n%s\n  used: %s (%s)", head, shown, overrides(run.data["normalisation"]),
                 "stated" if stated else "none scores better beyond noise")
        return
    raise UserError(f"{head}: {'; '.join(f'{k} {v[0]:.4f}' for k, v in table.items())} ({monitor}). They score "
                    f"better beyond noise under {winner}, so the script that wrote the file probably fed its model "
                    f"such inputs. State the normalisation its weights were trained with: {overrides(table[winner][2])}"
                    f" (or, to keep the configured one, {overrides(run.data['normalisation'])}). Nothing was "
                    "trained or written.")
