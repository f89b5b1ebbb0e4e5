"""A sweep at a glance, for compare: the grid of a two-parameter sweep as a heatmap, an Optuna search as the
score of each trial over the searched values.

Seeds are replicates, never an axis: jobs equal in everything but the values `is_replicate_key` names (the seed,
what only names, tags, continues, logs or places a run) are one configuration, and a grid cell holds the mean and
the spread (sample standard deviation) over its jobs, so a 2 x 2 x 3-seed sweep is still a 2 x 2 grid.

Read from the sweep directory alone: each job's `.hydra/` (its overrides, the sweeper that made it) and, for the
basic sweeper, `multirun.yaml` (the swept lists, so that a grid point whose job never wrote metrics still has a
cell). A job dir without metrics.csv, or whose runs never scored, is a failed job or trial.
"""
import csv
import math
import statistics
from pathlib import Path

import yaml

from project.commands.text import fmt

FAILED, MISSING = "failed", "missing"

# Values that do not make two runs different configurations: runs equal in everything else are replicates (issue 19)
REPLICATE_KEYS = {"seed", "name", "tags", "trainer.device", "trainer.num_threads"}
REPLICATE_PREFIXES = ("resume.", "logger.", "tags.")


def is_replicate_key(key: str) -> bool:
    """seed, name, tags, resume.*, logger.*, trainer.device, trainer.num_threads (config keys or override keys;
    a config-group choice such as `logger=csv` counts as its group)."""
    key = key.lstrip("+~")
    return key in REPLICATE_KEYS or key in ("resume", "logger") or key.startswith(REPLICATE_PREFIXES)


def mean_spread(values) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation or None below 2 values, n) of the numbers that are not NaN."""
    known = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not known:
        return math.nan, None, 0
    return statistics.fmean(known), statistics.stdev(known) if len(known) >= 2 else None, len(known)


def fmt_spread(mean: float, spread: float | None, n: int | None = None, sep: str = " ") -> str:
    """'0.5123 +- 0.0150' ('0.5123' without a spread), '(n=2)' appended when n is given."""
    text = fmt(mean) + (f"{sep}+- {fmt(spread)}" if spread is not None else "")
    return text + (f" (n={n})" if n is not None else "")


def jobs(sweep_dir: Path) -> list[dict]:
    """Every job Hydra started under the sweep dir: {"dir", "num", "overrides": {key: value string}}."""
    found = []
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides.parent.parent
        values = dict(o.split("=", 1) for o in yaml.safe_load(overrides.read_text()) or [] if "=" in o)
        found.append({"dir": job_dir.resolve(), "num": int(job_dir.name) if job_dir.name.isdigit() else job_dir.name,
                      "overrides": {k.lstrip("+~"): v for k, v in values.items()}})
    return sorted(found, key=lambda j: (isinstance(j["num"], str), j["num"]))


def sweeper(sweep_dir: Path) -> dict:
    """The sweeper's config as the jobs recorded it ({} when the dir holds no Hydra jobs)."""
    for hydra_yaml in sorted(sweep_dir.glob("*/.hydra/hydra.yaml")):
        return (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("sweeper") or {}
    return {}


def swept_lists(sweep_dir: Path) -> dict[str, list[str]]:
    """{key: [value, ...]} of the comma lists on a basic sweep's command line (multirun.yaml)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task", [])
    lists = {}
    for override in OverridesParser.create().parse_overrides(task):
        if override.is_sweep_override():
            lists[override.get_key_element().lstrip("+~")] = [str(v) for v in override.sweep_string_iterator()]
    return lists


def scores_by_job(sweep_dir: Path, runs: list[dict]) -> list[dict]:
    """Each job with its run's best score (nan: failed), in job order."""
    by_dir = {Path(r["run_dir"]).resolve(): r for r in runs}
    out = []
    for job in jobs(sweep_dir):
        run = by_dir.get(job["dir"])
        best = math.nan if run is None else run["best"]
        out.append({**job, "best": best, "failed": math.isnan(best)})
    return out


def grid(sweep_dir: Path, runs: list[dict]) -> dict | None:
    """A sweep over exactly two values (seeds and the other replicate keys are not axes): {"x", "y", "xs", "ys",
    "cells": {(x, y): mean score, 'failed' or 'missing'}, "spread": {(x, y): sample std over the cell's jobs or None},
    "n": {(x, y): scored jobs}, "replicates": the most jobs in one cell}."""
    lists = {k: v for k, v in swept_lists(sweep_dir).items() if not is_replicate_key(k)}
    found = scores_by_job(sweep_dir, runs)
    if len(lists) != 2 or not found:
        return None
    (y, ys), (x, xs) = lists.items()  # the first swept key down the rows, the second across
    scores = {(a, b): [] for a in xs for b in ys}
    jobs_in = {key: 0 for key in scores}
    for job in found:
        key = (job["overrides"].get(x), job["overrides"].get(y))
        if key in scores:
            jobs_in[key] += 1
            scores[key].append(job["best"])
    stats = {key: mean_spread(values) for key, values in scores.items()}
    cells = {key: MISSING if not jobs_in[key] else FAILED if not stats[key][2] else stats[key][0] for key in scores}
    return {"x": x, "y": y, "xs": xs, "ys": ys, "cells": cells, "spread": {k: v[1] for k, v in stats.items()},
            "n": {k: v[2] for k, v in stats.items()}, "replicates": max(jobs_in.values())}


def cell_text(g: dict, key, sep: str = " ") -> str:
    """A cell as text: '0.5123' (one job per cell, as before seeds were replicates), '0.5123 +- 0.0150' (the mean
    and spread over its seeds), '(n=2)' added where fewer jobs than the grid's most scored; 'failed', 'missing'."""
    v = g["cells"][key]
    if not isinstance(v, float):
        return v
    replicates = g.get("replicates", 1)
    n = g.get("n", {}).get(key, 1)
    return fmt_spread(v, g.get("spread", {}).get(key), n if replicates > 1 and n < replicates else None, sep)


def best_cell(g: dict, higher: bool):
    scored = [(v, k) for k, v in g["cells"].items() if isinstance(v, float)]
    return ((max if higher else min)(scored)[1]) if scored else None


def grid_rows(g: dict) -> list[list[str]]:
    """The grid as text: one row per y value, one column per x value."""
    rows = [[f"{g['y']} \\ {g['x']}", *g["xs"]]]
    for b in g["ys"]:
        rows.append([b, *(cell_text(g, (a, b)) for a in g["xs"])])
    return rows


def write_grid_csv(g: dict, path: Path) -> None:
    from project.atomic import replacing

    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(grid_rows(g))


def heatmap(g: dict, monitor: str, higher: bool, title: str, out: Path, label: str | None = None,
            mark: tuple | None = None) -> None:
    """`label`: the colour bar's (default `best val <monitor>`); `mark`: (cell, text) to outline instead of the
    best cell (a test score's heatmap marks the cell validation picked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[v if isinstance(v, float) else np.nan for v in (g["cells"][(a, b)] for a in g["xs"])]
                       for b in g["ys"]])
    fig, ax = plt.subplots(figsize=(1.6 * len(g["xs"]) + 3, 1.1 * len(g["ys"]) + 2))
    cmap = plt.get_cmap("viridis" if higher else "viridis_r").with_extremes(bad="#dddddd")  # failed, missing
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=label or f"best val {monitor}")
    best, note = mark or (best_cell(g, higher), "best")
    for i, b in enumerate(g["ys"]):
        for j, a in enumerate(g["xs"]):
            v = g["cells"][(a, b)]
            text = cell_text(g, (a, b), sep="\n")
            ax.text(j, i, text + (f"\n{note}" if (a, b) == best else ""), ha="center", va="center", fontsize=10,
                    color="white" if isinstance(v, float) and image.norm(v) < 0.6 else "black", fontweight="bold" if (a, b) == best else None)
            if (a, b) == best:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
    ax.set_xticks(range(len(g["xs"])), g["xs"])
    ax.set_yticks(range(len(g["ys"])), g["ys"])
    ax.set_xlabel(g["x"])
    ax.set_ylabel(g["y"])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    from project.atomic import replacing

    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=100)
    plt.close(fig)


def trials(sweep_dir: Path, runs: list[dict]) -> dict | None:
    """An Optuna search: {"params": [searched keys], "log": {key: bool}, "trials": [job with best], "best": job}."""
    spec = sweeper(sweep_dir)
    if "optuna" not in str(spec.get("_target_", "")).lower():
        return None
    params = dict(spec.get("params") or {})
    found = scores_by_job(sweep_dir, runs)
    direction = str(spec.get("direction", "minimize")).lower()
    scored = [t for t in found if not t["failed"]]
    best = (max if "max" in direction else min)(scored, key=lambda t: t["best"]) if scored else None
    return {"params": list(params), "log": {k: "log" in str(v) for k, v in params.items()}, "trials": found,
            "best": best, "direction": direction}


def trial_plot(t: dict, monitor: str, title: str, out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = t["params"] or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.5), squeeze=False)
    ok = [x for x in t["trials"] if not x["failed"]]
    floor = min((x["best"] for x in ok), default=0.0)
    for ax, key in zip(axes[0], keys):
        def value(trial, key=key):
            return float(trial["num"]) if key == "trial" else float(trial["overrides"].get(key, "nan"))

        ax.scatter([value(x) for x in ok], [x["best"] for x in ok], c=[x["num"] for x in ok], cmap="viridis", s=40,
                   label="trial (colour: trial number)")
        bad = [x for x in t["trials"] if x["failed"]]
        if bad:
            ax.scatter([value(x) for x in bad], [floor] * len(bad), marker="x", color="red", s=60,
                       label="failed trial (drawn at the lowest score)")
        if t["best"] is not None:
            b = t["best"]
            ax.scatter([value(b)], [b["best"]], marker="*", s=300, facecolor="none", edgecolor="red", lw=1.5,
                       label=f"best: trial #{b['num']} ({fmt(b['best'])})")
        if t["log"].get(key):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_xlabel(key)
        ax.set_ylabel(f"best val {monitor}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from project.atomic import replacing

    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=100)
    plt.close(fig)
