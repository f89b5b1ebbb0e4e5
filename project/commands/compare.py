"""compare SWEEP_DIR_OR_RUN_DIRS...: which run won, with the values that differ between the runs as columns.

    python -m project.commands.compare multirun/2026-01-01/12-00-00            # every run under a sweep directory
    python -m project.commands.compare outputs/2026-01-01/12-00-00 outputs/2026-01-02/09-30-00 [--out DIR] [--json]

Runs are sorted by their best val metric (from metrics.csv). For continuations (resume=reset_optimizer) the
parent's best and the difference are shown. Writes comparison.md, comparison.csv and comparison.png (val curves
of all runs) to --out (default: the directory given when there is one, else the current directory). For a sweep
over two values it also writes grid.csv and heatmap.png (the best score of each cell, failed and missing cells
marked); for an Optuna search trials.png (each trial's score over the searched values) and marks the best trial.
A run whose best weights were scored on a split (eval/<split>-best.json from project-evaluate, results.json from
trainer.test_after_fit) gets that score as a column (`test dataset_f1`), and a grid its own table and
heatmap_<split>.png; the ranking stays by the best val metric (a test score never picks).
Seeds are replicates: runs whose configs are equal except for seed, name, tags, resume.*, logger.*,
trainer.device and trainer.num_threads are one configuration. When a configuration has several runs, the table
lists configurations (mean +- spread and n of the best val score, and of a scored split's), ranked by the mean,
and each run below it; the spread is the sample standard deviation over the seeds, and the top two are "within
noise" when their means differ by less than the larger spread. `seed` is never a grid axis: a 2 x 2 x 3-seed
sweep draws a 2 x 2 heatmap of "mean +- spread". configurations.csv holds the configurations as numbers.
Needs only the run directories, not W&B.
"""
import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

from project import noise
from project.atomic import replacing, write_atomic
from project.commands import grid as sweeps
from project.commands.text import fail, fmt, fmt_value, plain
from project.errors import UserError
from project.rundirs.discovery import find_runs as find_runs_below, job_order
from project.rundirs.reading import (check_run_dir, final_checkpoint, flatten, guess_monitor, higher_is_better,
                          metric_rows, run_config)


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories: each path that holds metrics.csv, or the run dirs below it (a sweep) that hold one."""
    runs = []
    for spec in paths:
        path = Path(spec)
        if (path / "metrics.csv").is_file() or not path.is_dir():
            runs.append(check_run_dir(path))  # a missing path gets its explanation here
            continue
        found = [r for r in find_runs_below(path) if (r / "metrics.csv").is_file()]  # those with an epoch to compare
        if not found:
            check_run_dir(path)  # raises: no metrics.csv here or below
        runs += found
    return list(dict.fromkeys(runs))


def summarize(run_dir: Path) -> dict:
    rows = metric_rows(run_dir)
    path, state = final_checkpoint(run_dir)
    monitor = guess_monitor(rows, state)
    higher = higher_is_better(monitor)
    values = [(r[f"val_{monitor}"], r["epoch"]) for r in rows if not math.isnan(r.get(f"val_{monitor}", math.nan))]
    best, best_epoch = (max if higher else min)(values, key=lambda v: v[0]) if values else (math.nan, None)
    parent = (state or {}).get("parent_best") or {}
    status = "-"
    if path is not None:
        status = (("early stopped" if state["early_stopping"].get("stopped") else "done")
                  if path.name == "final_model.pth" else "unfinished")
        status += limited_label(state.get("limited"))
    return {"run_dir": run_dir, "monitor": monitor, "higher": higher, "best": best, "best_epoch": best_epoch,
            "epochs": rows[-1]["epoch"], "status": status, "parent_best": parent.get("score"),
            "parent": parent.get("path"), "config": flatten(run_config(run_dir, state)),
            "curve": [(epoch, value) for value, epoch in values],  # validated epochs only
            # the noise rule (project/noise.py), over the run's own validations (not a continuation's start row)
            "spread": noise.spread([r.get(f"val_{monitor}") for r in rows if r.get("phase") != "start"]),
            "evals": eval_scores(run_dir), "images_per_s": images_per_s(rows)}


def images_per_s(rows: list[dict]) -> float:
    """The run's mean training images/s over its epochs (metrics.csv's perf_images_per_s); NaN for a run that
    predates the column."""
    values = [r["perf_images_per_s"] for r in rows if not math.isnan(r.get("perf_images_per_s", math.nan))]
    return sum(values) / len(values) if values else math.nan


def limited_label(limited: dict | None) -> str:
    """' (limited: train 3, val 2 batches)', ' (overfit 4 batches)': a trial, its scores not a training run's."""
    if not limited:
        return ""
    if limited.get("overfit_batches"):
        return f" (overfit {limited['overfit_batches']} batches)"
    parts = [f"{split} {limited[f'limit_{split}_batches']:g}" for split in ("train", "val")
             if limited.get(f"limit_{split}_batches")]
    return f" (limited: {', '.join(parts)} batches)"


def eval_column(result: dict) -> str:
    """`test dataset_f1` for the best weights scored on test (`... (last)` for other weights)."""
    suffix = "" if result.get("checkpoint") == "best" else f" ({result.get('checkpoint')})"
    return f"{result['split']} {result['main_metric']}{suffix}"


def eval_scores(run_dir: Path) -> dict[str, float]:
    """{column: score} of the run's best weights scored on a split: results.json (trainer.test_after_fit), then
    eval/<split>-best.json (project-evaluate, which wins for the same split)."""
    found = {}
    for path in [run_dir / "results.json", *sorted((run_dir / "eval").glob("*-best.json"))]:
        try:
            result = json.loads(path.read_text())
            found[eval_column(result)] = float(result["metrics"][result["main_metric"]])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an evaluation file
    return found


def swept_keys(runs: list[dict]) -> list[str]:
    """Config values that differ between the runs: what the sweep (or the user) changed. Not `tags` (labels, a
    column of their own)."""
    keys = sorted(set().union(*(r["config"] for r in runs)) - {"tags"})
    return [k for k in keys if len({repr(r["config"].get(k)) for r in runs}) > 1]


def short_names(paths: list[Path]) -> list[str]:
    """Run directories relative to their common parent (0, 1, ... for a sweep)."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([p.resolve() for p in paths]))
    return [str(p.resolve().relative_to(common)) for p in paths]


def rank(runs: list[dict]) -> list[dict]:
    higher = runs[0]["higher"]
    missing = [r for r in runs if math.isnan(r["best"])]
    ranked = sorted((r for r in runs if not math.isnan(r["best"])), key=lambda r: r["best"], reverse=higher)
    return ranked + missing


def eval_columns(runs: list[dict]) -> list[str]:
    return sorted(set().union(*(r["evals"] for r in runs)))


def table_rows(runs: list[dict], keys: list[str]) -> list[list[str]]:
    m = runs[0]["monitor"]
    evals = eval_columns(runs)
    tagged = any(r["config"].get("tags") for r in runs)  # tags=[...]: the user's labels, shown when any run has one
    header = ["#", "run", *["tags"] * tagged, *keys, f"best val {m}", *evals, "img/s", "best epoch", "epochs",
              "status"]
    has_parent = any(r["parent_best"] is not None for r in runs)
    if has_parent:
        header += ["parent best", "vs parent"]
    rows = [header]
    for i, r in enumerate(runs, 1):
        row = [str(i), r["name"], *[",".join(map(str, r["config"].get("tags") or [])) or "-"] * tagged,
               *(fmt_value(r["config"].get(k)) for k in keys), fmt(r["best"]),
               *(fmt(r["evals"].get(c)) for c in evals), fmt(r["images_per_s"], 0), fmt(r["best_epoch"]),
               str(r["epochs"]), r["status"]]
        if has_parent:
            delta = r["best"] - r["parent_best"] if r["parent_best"] is not None else math.nan
            row += [fmt(r["parent_best"]), "-" if math.isnan(delta) else f"{delta:+.4f}"]
        rows.append(row)
    return rows


def top_two(runs: list[dict], seeds: bool = False) -> str:
    """Is the winner's lead real? The noise rule (project/noise.py) on the two best runs, or (`seeds`) the two best
    configurations, whose spread is the sample standard deviation of their best scores over seeds."""
    if len(runs) < 2 or math.isnan(runs[1]["best"]):
        return ""
    a, b = runs[0], runs[1]
    delta = a["best"] - b["best"]
    if seeds:
        show = lambda c: f"{c['name']} {sweeps.fmt_spread(c['best'], c['spread'], c['n'])}"
        return (f"\nTop two: {show(a)} and {show(b)}: means differ by {abs(delta):.4f} "
                f"{noise.verdict(delta, a['spread'], b['spread'])}; a configuration's spread is the sample standard "
                "deviation of its best score over seeds.\n")
    return (f"\nTop two: {a['name']} {fmt(a['best'])} and {b['name']} {fmt(b['best'])} differ by {abs(delta):.4f} "
            f"{noise.verdict(delta, a['spread'], b['spread'])}; a run's spread is the standard deviation of its "
            "last 5 validations.\n")


def configurations(runs: list[dict]) -> list[dict]:
    """Runs grouped into configurations (equal configs but for the replicate keys: seed, name, tags, resume.*,
    logger.*, trainer.device, trainer.num_threads), in the order of their first run. Each: its runs, the mean,
    spread (sample std over seeds) and n of their best scores and of each scored split, a status summary."""
    groups = {}
    for r in runs:
        identity = (tuple(sorted((k, repr(v)) for k, v in r["config"].items() if not sweeps.is_replicate_key(k)))
                    if r["config"] else ("no config", str(r["run_dir"])))  # a run without a config stands alone
        groups.setdefault(identity, []).append(r)
    configs = []
    for members in groups.values():
        members = sorted(members, key=lambda r: job_order(Path(r["name"])))  # jobs 0, 4, 8: the sweep's order
        mean, spread, n = sweeps.mean_spread(r["best"] for r in members)
        statuses = {}
        for r in members:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        parents = {r["parent_best"] for r in members}
        configs.append({
            "runs": members, "monitor": members[0]["monitor"], "higher": members[0]["higher"], "best": mean,
            "spread": spread, "n": n, "config": members[0]["config"], "seeds": [r["config"].get("seed") for r in members],
            "evals": {c: sweeps.mean_spread(r["evals"].get(c, math.nan) for r in members) for c in eval_columns(members)},
            "status": ", ".join(f"{count} {status}" for status, count in statuses.items()),
            "parent_best": parents.pop() if len(parents) == 1 else "mixed"})
    return configs


def configuration_tags(c: dict) -> str:
    """The tags=[...] of a configuration's runs, together ('-' for none)."""
    return ",".join(sorted({str(t) for r in c["runs"] for t in r["config"].get("tags") or []})) or "-"


def configuration_rows(configs: list[dict], keys: list[str]) -> list[list[str]]:
    """The ranked configurations: mean +- spread (n) of the best val score and of each scored split."""
    m = configs[0]["monitor"]
    evals = sorted(set().union(*(c["evals"] for c in configs)))
    tagged = any(configuration_tags(c) != "-" for c in configs)  # as the run table: shown when any run has one
    header = ["#", "runs", *["tags"] * tagged, *keys, "n", f"best val {m}", *evals, "status"]
    has_parent = any(c["parent_best"] is not None for c in configs)
    if has_parent:
        header += ["parent best", "vs parent"]
    rows = [header]
    for i, c in enumerate(configs, 1):
        scored = []
        for column in evals:
            mean, spread, n = c["evals"].get(column, (math.nan, None, 0))
            scored.append(sweeps.fmt_spread(mean, spread, n if n != c["n"] else None) if n else "-")
        row = [str(i), ", ".join(r["name"] for r in c["runs"]), *[configuration_tags(c)] * tagged,
               *(fmt_value(c["config"].get(k)) for k in keys), str(c["n"]), sweeps.fmt_spread(c["best"], c["spread"]),
               *scored, c["status"]]
        if has_parent:
            parent = c["parent_best"]
            if parent is None or parent == "mixed":
                row += [parent or "-", "-"]
            else:
                row += [fmt(parent), "-" if math.isnan(c["best"]) else f"{c['best'] - parent:+.4f}"]
        rows.append(row)
    return rows


def configuration_csv(configs: list[dict], keys: list[str], path: Path) -> None:
    """configurations.csv: the same ranking as numbers (mean, spread and n in columns of their own)."""
    m = configs[0]["monitor"]
    evals = sorted(set().union(*(c["evals"] for c in configs)))
    number = lambda v: "" if v is None or isinstance(v, float) and math.isnan(v) else repr(v)
    header = ["rank", "runs", *keys, "n", f"best val {m} mean", f"best val {m} spread"]
    header += [f"{column} {part}" for column in evals for part in ("mean", "spread", "n")]
    rows = [header + ["status"]]
    for i, c in enumerate(configs, 1):
        row = [i, " ".join(r["name"] for r in c["runs"]), *(fmt_value(c["config"].get(k)) for k in keys), c["n"],
               number(c["best"]), number(c["spread"])]
        for column in evals:
            mean, spread, n = c["evals"].get(column, (math.nan, None, 0))
            row += [number(mean), number(spread), n]
        rows.append(row + [c["status"]])
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])])


def plot(runs: list[dict], keys: list[str], title: str, out: Path, configs: list[dict] | None = None) -> None:
    """The val curve of every run; with `configs` (seeds as replicates) one colour and one legend entry per
    configuration, its seeds drawn in that colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    m = runs[0]["monitor"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colour, legend = {}, {}
    for i, c in enumerate(configs or []):
        for j, r in enumerate(c["runs"]):
            colour[id(r)] = f"C{i % 10}"
            if j == 0:
                legend[id(r)] = (f"{c['name']}: {sweeps.fmt_spread(c['best'], c['spread'])} "
                                 f"over {c['n']} seed{'s' if c['n'] != 1 else ''}")
    ordered = [r for c in configs for r in c["runs"]] if configs else runs  # the legend in ranking order
    for r in ordered:
        label = r["name"] + (": " + ", ".join(f"{k}={fmt_value(r['config'].get(k))}" for k in keys) if keys else "")
        epochs, values = zip(*r["curve"])
        if configs:
            line, = ax.plot(epochs, values, "o-", ms=2, lw=1, alpha=0.8, color=colour[id(r)],
                            label=legend.get(id(r), "_nolegend_"))
        else:
            line, = ax.plot(epochs, values, "o-", ms=3, lw=1.5, label=f"{label} (best {fmt(r['best'])})")
        if r["best_epoch"] is not None:
            ax.plot([r["best_epoch"]], [r["best"]], "o", color=line.get_color(), ms=6)
        if r["parent_best"] is not None:
            ax.axhline(r["parent_best"], color=line.get_color(), ls=":", lw=1)
    if any(r["parent_best"] is not None for r in runs):
        ax.plot([], [], "k:", lw=1, label="parent's best (dotted)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {m}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if runs[0]["higher"] else "upper right")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=100)
    plt.close(fig)


def gather(paths: list[str], evals: dict | None) -> list[dict]:
    """Every run under `paths`, summarized and named, with the scores of `evals`; ranked by their best."""
    run_dirs = find_runs(paths)
    runs = [summarize(p) for p in run_dirs]
    for r, name in zip(runs, short_names(run_dirs)):
        r["name"] = name
        r["evals"].update({eval_column(e): e["metrics"][e["main_metric"]]
                           for e in (evals or {}).get(Path(r["run_dir"]).resolve(), [])})
    monitors = {r["monitor"] for r in runs}
    if len(monitors) > 1:
        raise UserError(f"These runs monitor different metrics ({', '.join(sorted(monitors))}), so their bests "
                        "cannot be ranked together. Compare runs of the same task.")
    return rank(runs)


def named_configurations(runs: list[dict]) -> tuple[list[dict], list[str], bool]:
    """The runs grouped by configuration, (configurations, the keys that tell them apart, whether any has
    replicates); with replicates each is named by its values and ranked by its mean."""
    configs = configurations(runs)
    seeds = any(len(c["runs"]) > 1 for c in configs)  # replicates: the table is by configuration
    config_keys = []
    if seeds:
        config_keys = [k for k in swept_keys(configs) if not sweeps.is_replicate_key(k)]
        for c in configs:
            c["name"] = (", ".join(f"{k}={fmt_value(c['config'].get(k))}" for k in config_keys) or
                         "runs " + ", ".join(r["name"] for r in c["runs"]))
        configs = rank(configs)
    return configs, config_keys, seeds


def tables_text(runs: list[dict], rows: list[list[str]], configs: list[dict], config_keys: list[str], seeds: bool,
                files: dict) -> str:
    """comparison.md's tables: the configurations first when there are replicates (and configurations.csv), then
    every run; a note on the scored splits' columns."""
    if seeds:  # configurations first (ranked by the mean over seeds), then every run
        files["configurations"] = files["markdown"].parent / "configurations.csv"
        configuration_csv(configs, config_keys, files["configurations"])
        text = markdown(configuration_rows(configs, config_keys)) + "\n" + top_two(configs, seeds=True)
        text += (f"\n{len(configs)} configurations, {len(runs)} runs: a configuration's runs differ only in seed, "
                 "name, tags, resume.*, logger.*, trainer.device or trainer.num_threads; `best val` is the mean +- "
                 "sample standard deviation of their best scores, ranked by the mean.\n\nEach run:\n\n"
                 + markdown(rows) + "\n")
    else:
        text = markdown(rows) + "\n"
        text += top_two(runs)
    scored = eval_columns(runs)
    if scored:
        text += (f"\n{', '.join(f'`{c}`' for c in scored)}: the best weights scored on that split (segmentation at "
                 f"each mask's original size) by project-evaluate or trainer.test_after_fit; `best val "
                 f"{runs[0]['monitor']}`: training's validation at data.image_size. Different measurements; the "
                 "ranking is by validation.\n")
    return text


def grid_text(sweep_dir: Path, runs: list[dict], where: str, files: dict) -> str:
    """A grid over two values: the best score of each cell, as text and as a heatmap (grid.csv, heatmap.png), and
    one heatmap per scored split; "" when the sweep is not such a grid."""
    g = sweeps.grid(sweep_dir, runs) if sweep_dir else None
    if not g:
        return ""
    out, m, higher = files["markdown"].parent, runs[0]["monitor"], runs[0]["higher"]
    files["grid"], files["heatmap"] = out / "grid.csv", out / "heatmap.png"
    sweeps.write_grid_csv(g, files["grid"])
    over = f", mean +- spread over {g['replicates']} seeds" if g["replicates"] > 1 else ""
    text = (f"\nBest val {m} per grid cell ({g['y']} down, {g['x']} across{over}):\n\n"
            + markdown(sweeps.grid_rows(g)) + "\n")
    sweeps.heatmap(g, m, higher, f"Best val {m}{over}: {where}", files["heatmap"])
    for column in eval_columns(runs):  # the scored split per cell: a job without that score is "-", not failed
        name = "heatmap_" + "_".join(column.replace("(", "").replace(")", "").split())  # heatmap_test_dataset_f1
        e = sweeps.grid(sweep_dir, [{**r, "best": r["evals"].get(column, math.nan)} for r in runs])
        e["cells"] = {k: "-" if v == sweeps.FAILED and g["cells"][k] != sweeps.FAILED else v
                      for k, v in e["cells"].items()}
        files[name] = out / f"{name}.png"
        text += f"\n{column} per grid cell (best weights{over}):\n\n" + markdown(sweeps.grid_rows(e)) + "\n"
        sweeps.heatmap(e, m, higher, f"{column}: {where}", files[name], label=column,
                       mark=(sweeps.best_cell(g, higher), "val's pick"))  # the test score picks nothing
    return text


def search_text(search: dict | None, m: str, where: str, files: dict) -> str:
    """An Optuna search: the score of each trial over the searched values (trials.png); "" for none."""
    if not search:
        return ""
    files["trials"] = files["markdown"].parent / "trials.png"
    failed = sum(t["failed"] for t in search["trials"])
    b = search["best"]
    values = ", ".join(f"{k}={b['overrides'].get(k)}" for k in search["params"]) if b else ""
    text = (f"\nOptuna search ({search['direction']}, {len(search['trials'])} trials, {failed} failed): "
            + (f"best trial #{b['num']} ({values}) with best val {m} {fmt(b['best'])}\n" if b else
               "no trial finished\n"))
    sweeps.trial_plot(search, m, f"Optuna trials: {where}", files["trials"])
    return text


def as_result(runs: list[dict], keys: list[str], rows: list[list[str]], files: dict, configs: list[dict],
              config_keys: list[str], seeds: bool) -> dict:
    """What compare() returns (and --json prints)."""
    result = {"monitor": runs[0]["monitor"], "swept": keys, "table": rows, "files": {k: str(v) for k, v in files.items()},
              "runs": [{k: (str(v) if k == "run_dir" else v) for k, v in r.items() if k not in ("config", "curve")}
                       | {"values": {k: r["config"].get(k) for k in keys}} for r in runs]}
    if seeds:
        result["configurations"] = [
            {"name": c["name"], "runs": [r["name"] for r in c["runs"]], "seeds": c["seeds"], "n": c["n"],
             "mean": c["best"], "spread": c["spread"], "status": c["status"],
             "evals": {col: dict(zip(("mean", "spread", "n"), v)) for col, v in c["evals"].items()},
             "values": {k: c["config"].get(k) for k in config_keys}} for c in configs]
        result["configuration_table"] = configuration_rows(configs, config_keys)
    return result


def compare(paths: list[str], out=None, evals: dict | None = None) -> dict:
    """`evals`: {resolved run dir: [evaluation result, ...]} scored now (project-evaluate --out elsewhere)."""
    runs = gather(paths, evals)
    keys = swept_keys(runs)
    configs, config_keys, seeds = named_configurations(runs)
    sweep_dir = Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / "metrics.csv").is_file() else None
    search = sweeps.trials(sweep_dir, runs) if sweep_dir else None
    if search and search["best"] is not None:
        best_dir = search["best"]["dir"]
        for r in runs:
            r["status"] += " (best trial)" if Path(r["run_dir"]).resolve() == best_dir else ""
    rows = table_rows(runs, keys)
    out = Path(out) if out else Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "png": out / "comparison.png"}
    where = paths[0] if len(paths) == 1 else f"{len(runs)} runs"
    m = runs[0]["monitor"]
    text = tables_text(runs, rows, configs, config_keys, seeds, files)
    text += grid_text(sweep_dir, runs, where, files)
    text += search_text(search, m, where, files)
    write_atomic(files["markdown"], text)
    with replacing(files["csv"]) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    best = f"\nbest configuration: {configs[0]['name']}" if seeds else f" (best run: {runs[0]['name']})"
    plot(runs, keys, f"Val {m}: {where}{best}", files["png"], configs if seeds else None)
    return as_result(runs, keys, rows, files, configs, config_keys, seeds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="a sweep directory, or run directories")
    parser.add_argument("--out", help="directory for comparison.md/.csv/.png")
    parser.add_argument("--json", action="store_true", help="print the ranked runs as JSON")
    args = parser.parse_args(argv)
    try:
        result = compare(args.paths, args.out)
    except UserError as e:
        return fail(e)
    if args.json:
        print(json.dumps(plain(result), indent=1, default=str))
        return 0
    print(Path(result["files"]["markdown"]).read_text().rstrip())  # the table, and the grid or search summary
    print("\nwrote " + ", ".join(result["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
