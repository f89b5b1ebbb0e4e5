"""analyze RUN_DIR|CHECKPOINT: training curves as a PNG and a verdict in words.

    python -m project.commands.analyze outputs/2026-01-01/12-00-00 [--out curves.png] [--streak 3] [--json]
    python -m project.commands.analyze their_best_model.pth     # a file whose `history` holds the curves

A checkpoint another script wrote often keeps its curves as `history`, a dict of lists (train_loss, val_f_score,
lr, ...: one value per epoch); those are read as metrics.csv would be.

The verdict answers: which epoch was best, how far train and val are apart (at the best epoch and at the end),
from which epoch the run overfitted (val falling while train keeps improving), how often a new best came after
a streak without one (a reason to be patient), and whether early stopping ended the run.
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from project import noise
from project.commands.text import READS, fail, fmt, plain, trust_flag, trusting
from project.errors import UserError
from project.rundirs.reading import check_run_dir, final_checkpoint, guess_monitor, higher_is_better, metric_rows


def series(rows: list[dict], key: str) -> list[float]:
    return [row.get(key, math.nan) for row in rows]


def improves(value, best, higher: bool) -> bool:
    """Is `value` a new best over `best` (None: nothing yet)? Missing values (NaN) never are."""
    if math.isnan(value):
        return False
    return best is None or (value > best if higher else value < best)


def better(a, b, higher: bool) -> bool:
    """a strictly better than b; False when either is missing."""
    return not (math.isnan(a) or math.isnan(b)) and (a > b if higher else a < b)


def verdict(rows: list[dict], monitor: str, higher: bool, streak: int = 3) -> dict:
    """The numbers behind the verdict, from metrics.csv rows (see runs.metric_rows).

    Only validated epochs count (trainer.eval_interval > 1 leaves the others empty), and streaks are counted
    in validations, as patience is. gap: how much better train is than val (train - val for a score, val -
    train for a loss), so positive means the model fits the training data better; "end" is the last
    validated epoch. recoveries: new bests after at least `streak` validations without one. overfit_start:
    the first epoch after the last best at which val is below its best while train is better than at the best
    epoch, provided val stayed below its best for at least `streak` validations and train ended better (a dip
    shorter than that could still turn into a recovery).
    """
    epochs, val, train = [r["epoch"] for r in rows], series(rows, f"val_{monitor}"), series(rows, f"train_{monitor}")
    validated = [i for i, v in enumerate(val) if not math.isnan(v)]
    if not validated:
        raise UserError(f"metrics.csv has no values in column val_{monitor}, so there is nothing to judge.")

    best_i, recoveries, since = None, [], 0  # since: validations without a new best
    for i in validated:
        if improves(val[i], None if best_i is None else val[best_i], higher):
            if best_i is not None and since >= streak:
                recoveries.append({"epoch": epochs[i], "value": val[i], "validations_without_improvement": since,
                                   "previous_best": val[best_i], "previous_best_epoch": epochs[best_i]})
            best_i, since = i, 0
        else:
            since += 1

    def gap(i):
        if math.isnan(train[i]):
            return math.nan
        return train[i] - val[i] if higher else val[i] - train[i]

    last = validated[-1]
    overfit = None
    if since >= streak and better(train[last], train[best_i], higher) and better(val[best_i], val[last], higher):
        start = next(i for i in validated if i > best_i and better(train[i], train[best_i], higher)
                     and better(val[best_i], val[i], higher))
        overfit = {"epoch": epochs[start], "val_from": val[best_i], "val_to": val[last],
                   "train_from": train[best_i], "train_to": train[last]}
    val_loss, train_loss = series(rows, "val_loss"), series(rows, "train_loss")
    return {
        "monitor": monitor, "higher_is_better": higher, "epochs": epochs[-1], "end_epoch": epochs[last],
        "best_epoch": epochs[best_i], "best": val[best_i], "train_at_best": train[best_i],
        "validations_since_best": since,
        "gap_at_best": gap(best_i), "gap_at_end": gap(last), "val_at_end": val[last], "train_at_end": train[last],
        "loss_gap_at_best": val_loss[best_i] - train_loss[best_i], "loss_gap_at_end": val_loss[last] - train_loss[last],
        "overfit_start": overfit, "recoveries": recoveries, "streak": streak,
        "phase_changes": [{"epoch": rows[i]["epoch"], "phase": rows[i]["phase"]} for i in range(1, len(rows))
                          if rows[i].get("phase") != rows[i - 1].get("phase") and rows[i - 1].get("phase") != "start"],
        # the noise rule (project/noise.py): the late level of the curve, and its spread
        "level": noise.level([val[i] for i in validated if rows[i].get("phase") != "start"]),
        "spread": noise.spread([val[i] for i in validated if rows[i].get("phase") != "start"]),
    }


def how_it_ended(run_dir: Path, state: dict | None, path: Path | None) -> dict:
    """From the final checkpoint (final_model.pth, else last.pth) and the early-stopping lines of training.log."""
    log = run_dir / "training.log"
    stops = re.findall(r"Early stopping in phase .*", log.read_text(errors="replace")) if log.is_file() else []
    if state is None:
        return {"ended": "unknown", "text": "unknown (no checkpoint in checkpoints/)", "log": stops}
    es, epoch = state["early_stopping"], state["epoch"]
    max_epochs = state["config"]["trainer"]["max_epochs"]
    if path.name == "final_model.pth" and es.get("stopped"):
        text = (f"early stopping at epoch {epoch} of {max_epochs}: {es['bad_epochs']} validations without "
                f"improvement (patience {es['patience']})")
        return {"ended": "early_stopping", "text": text, "log": stops}
    if path.name == "final_model.pth":
        return {"ended": "max_epochs", "text": f"ran all {max_epochs} epochs (no early stopping)", "log": stops}
    where = f", mid-epoch at batch {state['batch_in_epoch']}" if state.get("batch_in_epoch") else ""
    return {"ended": "not_finished", "log": stops,
            "text": f"not finished: last.pth holds epoch {epoch} of {max_epochs}{where} (stopped, or still running)"}


def report(run_dir: Path, v: dict, end: dict, png: Path) -> str:
    m, s = v["monitor"], v["streak"]
    lines = [f"Run {run_dir}: {v['epochs']} epochs, monitor val {m} ({'higher' if v['higher_is_better'] else 'lower'} "
             "is better)",
             f"  best epoch    {v['best_epoch']}: val {m} {fmt(v['best'])} (train {fmt(v['train_at_best'])})"
             + (f"; {v['level']}" if v["level"] else ""),
             f"  train-val gap {fmt(v['gap_at_best'])} at the best epoch, {fmt(v['gap_at_end'])} at the end "
             f"(epoch {v['end_epoch']}; val loss - train loss: {fmt(v['loss_gap_at_best'])} -> "
             f"{fmt(v['loss_gap_at_end'])})"]
    o = v["overfit_start"]
    if o:
        lines.append(f"  overfitting   from epoch {o['epoch']}: val {m} {fmt(o['val_from'])} -> {fmt(o['val_to'])} "
                     f"while train {m} {fmt(o['train_from'])} -> {fmt(o['train_to'])}")
    elif v["validations_since_best"] == 0:
        lines.append(f"  overfitting   none: val {m} was at its best at the last validation")
    elif v["validations_since_best"] < s:
        lines.append(f"  overfitting   too early to tell: val {m} has been below its best for "
                     f"{v['validations_since_best']} validations (< {s})")
    else:
        lines.append(f"  overfitting   none seen: after epoch {v['best_epoch']} val {m} did not fall while train "
                     "kept improving")
    lines.append(f"  recoveries    {len(v['recoveries'])} (a new best after >= {s} validations without one)")
    for r in v["recoveries"]:
        lines.append(f"                epoch {r['epoch']}: {fmt(r['value'])} after "
                     f"{r['validations_without_improvement']} validations at {fmt(r['previous_best'])} "
                     f"(best of epoch {r['previous_best_epoch']})")
    if v.get("start"):
        st, delta = v["start"], v["best"] - v["start"]["score"]
        beats = "beats" if better(v["best"], st["score"], v["higher_is_better"]) else "does not beat"
        lines.append(f"  start         this run {beats} its starting weights' {fmt(st['score'])} (scored here, "
                     f"epoch {st['epoch']}): {delta:+.4f} {noise.verdict(delta, v['spread'])}")
    if v.get("parent") and v["parent"].get("foreign"):
        lines.append(f"  parent        the file's stored best {fmt(v['parent']['score'])} was computed by another "
                     "script: not compared")
    elif v.get("parent") and not v.get("start"):
        p, delta = v["parent"], v["best"] - v["parent"]["score"]
        beats = "beats" if better(v["best"], p["score"], v["higher_is_better"]) else "does not beat"
        lines.append(f"  parent        this run {beats} its parent's best {fmt(p['score'])} (epoch {p['epoch']} of "
                     f"{p['path']}): {delta:+.4f} {noise.verdict(delta, v['spread'])}")
    for p in v["phase_changes"]:
        lines.append(f"  phase         {p['phase']!r} from epoch {p['epoch']}")
    if v.get("stored_epoch"):  # another script's file: its `epoch` next to the epochs counted here
        lines.append(f"  file's epoch  {v['stored_epoch']}")
    lines.append(f"  ended         {end['text']}")
    lines += [f"                training.log: {line}" for line in end["log"]]
    lines.append(f"  picture       {png}{v.get('png_why', '')}")
    return "\n".join(lines)


def train_val_panel(ax, rows: list[dict], key: str, label: str) -> None:
    """One panel of the plot: train and val `key` per epoch, the gap between them shaded by who is ahead."""
    epochs = [r["epoch"] for r in rows]
    train, val = series(rows, f"train_{key}"), series(rows, f"val_{key}")
    # the validated epochs (trainer.eval_interval > 1 leaves the others empty; a continuation's start row and a
    # validation-only score such as image_f_score have no train value); the gap where both exist
    validated = [(e, u) for e, u in zip(epochs, val) if not math.isnan(u)]
    xs = [e for e, t, u in zip(epochs, train, val) if not (math.isnan(t) or math.isnan(u))]
    train_at, val_at = [train[epochs.index(e)] for e in xs], [val[epochs.index(e)] for e in xs]
    ax.plot(epochs, train, "o-", ms=3, color="tab:blue", label=f"train {label}")
    if validated:
        ax.plot(*zip(*validated), "o-", ms=3, color="tab:orange", label=f"val {label}")
    # red where train is ahead of val (the overfitting direction), blue where val is ahead
    ahead = [better(t, u, higher_is_better(key)) for t, u in zip(train_at, val_at)]
    ax.fill_between(xs, train_at, val_at, where=ahead, interpolate=True, color="tab:red", alpha=0.15,
                    label="gap: train ahead of val")
    if not all(ahead):
        ax.fill_between(xs, train_at, val_at, where=[not a for a in ahead], interpolate=True,
                        color="tab:blue", alpha=0.08, label="gap: val ahead of train")
    ax.set_ylabel(label)


def mark_scores(ax, v: dict, last_epoch: int) -> None:
    """On the score panel: the best, the recoveries, the parent's best and where overfitting starts."""
    ax.plot([v["best_epoch"]], [v["best"]], "*", ms=15, color="tab:green",
            label=f"best: epoch {v['best_epoch']}, {fmt(v['best'])}")
    for r in v["recoveries"]:
        ax.annotate("recovery", (r["epoch"], r["value"]), textcoords="offset points", xytext=(0, 10),
                    ha="center", fontsize=8, color="tab:green")
    if v.get("parent") and not v["parent"].get("foreign"):
        ax.axhline(v["parent"]["score"], color="black", ls="-.", lw=1,
                   label=f"parent's best {fmt(v['parent']['score'])}")
    if v["overfit_start"]:
        ax.axvspan(v["overfit_start"]["epoch"] - 0.5, last_epoch + 0.5, color="grey", alpha=0.12,
                   label=f"overfitting from epoch {v['overfit_start']['epoch']}")


def plot(rows: list[dict], v: dict, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    m, epochs = v["monitor"], [r["epoch"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]})
    panels = [(axes[0], "loss", "loss")] if m == "loss" else [(axes[0], "loss", "loss"), (axes[1], m, m)]
    for ax, key, label in panels:
        train_val_panel(ax, rows, key, label)
    if m == "loss":
        axes[1].set_visible(False)
    score_ax = axes[0] if m == "loss" else axes[1]
    mark_scores(score_ax, v, epochs[-1])
    axes[2].plot(epochs, series(rows, "lr"), "-", color="tab:purple", label="learning rate")
    axes[2].set_ylabel("lr")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[2].set_xlabel("epoch")
    for ax in axes:
        ax.axvline(v["best_epoch"], color="tab:green", ls=":", lw=1)
        for p in v["phase_changes"]:
            ax.axvline(p["epoch"] - 0.5, color="black", ls="--", lw=1)
        ax.grid(alpha=0.3)
    starts = [{"epoch": epochs[0] + 0.5, "phase": rows[0]["phase"]}] if v["phase_changes"] else []
    for p in starts + v["phase_changes"]:  # name each phase at its left edge
        axes[0].annotate(p["phase"], (p["epoch"] - 0.5, 1), xycoords=("data", "axes fraction"),
                         xytext=(3, -12), textcoords="offset points", fontsize=8)
    for ax in axes:
        if ax.get_visible():
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    from project.atomic import replacing

    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=100)
    plt.close(fig)


def history_rows(path: Path) -> tuple[list[dict], str | None]:
    """The `history` (a dict of equally long lists, one value per epoch) of a checkpoint file, as metric rows
    (epochs numbered from 1), and what its own `epoch` means next to them (None: it has none)."""
    from project.checkpoints import files as checkpoint, foreign  # imports torch: only when a checkpoint is read

    state = checkpoint.read(path)
    if checkpoint.is_ours(state):  # the same rule as the commands that build (docs/trust.md)
        from project.checkpoints import trust

        trust.check_file(state, path)
    history = state.get("history") if isinstance(state, dict) else None
    if not isinstance(history, dict) or not history or not all(isinstance(v, (list, tuple)) for v in history.values()):
        found = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{str(path)!r} holds no `history` (a dict of lists such as train_loss, val_f_score, lr) to "
                        f"draw (its keys: {found}). Pass a run directory, or a checkpoint that keeps its curves.")
    n = max(len(v) for v in history.values())
    rows = [{"epoch": i + 1, "phase": "train", **{k: float(v[i]) if i < len(v) and v[i] is not None else math.nan
                                                  for k, v in history.items()}} for i in range(n)]
    stored = foreign.number(state.get("epoch"))
    note = None if stored is None else f"{foreign.epoch_words(stored, n)}; numbered 1-{n} here"
    return rows, note


def picture_path(target: Path, run_dir: Path, out) -> tuple[Path, str]:
    """Where the PNG goes, and why there: --out; a file's curves into the working directory (a checkpoint often
    sits in a shared or read-only place); a run dir's into the run dir, or the working directory where the run
    dir cannot be written (someone else's run)."""
    if out:
        return Path(out), ""
    if target.is_file():
        return Path(f"{target.stem}_analysis.png"), ""
    if os.access(run_dir, os.W_OK):
        return run_dir / "analysis.png", ""
    return Path(f"{run_dir.name}_analysis.png"), f" ({run_dir} cannot be written)"


def analyze(run_dir, out=None, streak: int = 3) -> dict:
    target = Path(run_dir)
    stored_epoch = None
    if target.is_file():  # a checkpoint that keeps its own curves
        (rows, stored_epoch), path, state, run_dir = history_rows(target), None, None, target
        end = {"ended": "unknown", "text": f"unknown (curves from {target.name}'s history)", "log": []}
    else:
        run_dir = check_run_dir(target)
        rows = metric_rows(run_dir)
        path, state = final_checkpoint(run_dir)
        if state is not None:  # the same rule as the commands that build (docs/trust.md)
            from project.checkpoints import trust

            trust.check_file(state, path)
        end = how_it_ended(run_dir, state, path)
    monitor = guess_monitor(rows, state)
    v = verdict(rows, monitor, higher_is_better(monitor), streak)
    v["parent"] = (state or {}).get("parent_best")  # a reset_optimizer continuation: did it beat its parent?
    v["start"] = (state or {}).get("start_score")   # its starting weights, scored here
    png, why = picture_path(target, run_dir, out)
    headline = f"best val {monitor} {fmt(v['best'])} at epoch {v['best_epoch']} of {v['epochs']}"
    plot(rows, v, f"{run_dir}\n{headline}", png)
    return {"run_dir": str(run_dir), **v, "ended": end, "png": str(png), "png_why": why,
            "stored_epoch": stored_epoch}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (holds metrics.csv), or a checkpoint file with a `history`")
    parser.add_argument("--out", help="where to write the PNG (default: RUN_DIR/analysis.png; for a checkpoint file, "
                        "FILE-STEM_analysis.png in the working directory)")
    parser.add_argument("--streak", type=int, default=3,
                        help="validations without improvement before a new best counts as a recovery, and below the "
                             "best before it counts as overfitting (default 3)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    trust_flag(parser, READS)
    args = parser.parse_args(argv)
    try:
        with trusting(args):
            result = analyze(args.run_dir, args.out, args.streak)
    except UserError as e:
        return fail(e)
    if args.json:
        print(json.dumps(plain(result), indent=1, default=str))
    else:
        print(report(Path(result["run_dir"]), result, result["ended"], Path(result["png"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
