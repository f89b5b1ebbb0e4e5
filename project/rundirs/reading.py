"""Reading finished (or running) run directories: their metrics, checkpoints and configs.

Everything comes from the files a run leaves behind (metrics.csv, checkpoints/, .hydra/config.yaml,
training.log), so the tools work without W&B and on runs copied from a cluster.
"""
import math
from pathlib import Path

from project.errors import UserError
from project.loggers import read_rows


def check_run_dir(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist. Pass a run directory (outputs/<date>/<time>, the folder "
                        "that holds metrics.csv and checkpoints/).")
    if not (path / "metrics.csv").is_file():
        raise UserError(f"{str(path)!r} has no metrics.csv, so it is not a run directory or its first epoch has "
                        "not finished yet. Pass the folder that holds metrics.csv and checkpoints/ "
                        "(outputs/<date>/<time>, or multirun/<date>/<time>/<job number>).")
    return path


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.csv as one dict per epoch: numbers as floats (empty cells, e.g. a metric another phase does not
    report, as NaN), `phase` as text."""
    rows = []
    for raw in read_rows(run_dir / "metrics.csv"):
        row = {}
        for key, value in raw.items():
            if key == "phase":
                row[key] = value
            elif key == "epoch":
                row[key] = int(value)
            else:
                row[key] = float(value) if value not in ("", None) else math.nan
        rows.append(row)
    if not rows:
        raise UserError(f"{str(run_dir / 'metrics.csv')!r} has no rows yet: the run has not finished an epoch.")
    return rows


def final_checkpoint(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The run's last state: final_model.pth when it ended, else last.pth (checkpoints/resolve.py's table);
    (None, None) when there is none."""
    from project.checkpoints import resolve

    path = resolve.final(run_dir)
    if path is None:
        return None, None
    from project.checkpoints import files as checkpoint  # imports torch: only when a checkpoint is really read

    return path, checkpoint.load(path)


def run_config(run_dir: Path, state: dict | None) -> dict:
    """The run's resolved config: from its checkpoint, else from .hydra/config.yaml."""
    if state is not None:
        return state["config"]
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def guess_monitor(rows: list[dict], state: dict | None) -> str:
    """The metric best_model.pth follows: the checkpoint says; without one, f_score if logged, else the first
    val metric that is not the loss."""
    if state is not None and state.get("monitor"):
        return state["monitor"]
    names = [k[4:] for k in rows[0] if k.startswith("val_")]
    return "f_score" if "f_score" in names else next((n for n in names if n != "loss"), "loss")


def higher_is_better(monitor: str) -> bool:
    # as the objectives declare: scores (f_score, acc) go up, losses (loss, recon_loss) go down
    return not monitor.endswith("loss")


def flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def plain(value):
    """For JSON (--json, eval/*.json): NaN (a missing value) as null, so any JSON reader accepts the output."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
