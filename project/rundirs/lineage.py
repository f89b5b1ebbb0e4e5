"""lineage.json: the record every run dir keeps of where it comes from, rewritten with its checkpoints.

Training writes it (`begin` when a run starts, `saved` from save() on rank 0); project-lineage reads the files back
(project/rundirs/families.py) to draw a run's family without opening a checkpoint. A run dir's lineage.json holds
its parent (the checkpoint it continued, that run's dir, the mode), the config values it changed, its best score and
the spread of its last 5 validations (project/noise.py), how many times it was started in that dir, its sweep and
tags.
"""
import json
import statistics
from datetime import datetime
from pathlib import Path

from project import noise
from project.loggers import read_rows


FORMAT = "project-lineage-v1"
FILE = "lineage.json"
EDGE = {"full": "continued", "reset_optimizer": "reset_optimizer"}  # a parent entry's mode -> the edge's name


# ---------------------------------------------------------------------------------------------- writing (train.py)

def origin(lineage: list, *, parent: dict | None = None, foreign: bool | None = None, sweep: str | None = None,
           overrides=(), tags=(), parent_artifact: str | None = None) -> dict:
    """What a run dir comes from, fixed when it starts: its parent (the last of its checkpoint `lineage` entries),
    the mode, the changed values, its sweep, overrides and tags.

    `parent`: the parent checkpoint's contents when known (its `run_dir` names the parent run, wherever the file
    was copied to); `foreign`: the parent file was written by another script."""
    entry = lineage[-1] if lineage else None
    if entry is None:
        return {"mode": "new", "parent": None, "changed": {}, "sweep": sweep, "overrides": list(overrides),
                "tags": list(tags)}
    path = Path(entry["path"])
    if foreign is None:  # a file of ours always records the metric it monitors; another script's has none
        foreign = entry.get("monitor") is None
    if foreign:
        run_dir = None
    elif parent is not None and parent.get("run_dir"):
        run_dir = str(Path(parent["run_dir"]).resolve())
    else:
        run_dir = str(path.parent.parent) if path.parent.name == "checkpoints" else None
    return {
        "mode": EDGE.get(entry["mode"], entry["mode"]),
        "parent": {"path": str(path), "run_dir": run_dir, "foreign": bool(foreign), "mode": entry["mode"],
                   "epoch": entry.get("epoch"), "best_score": entry.get("best_score"),
                   "monitor": entry.get("monitor"), "best_name": (parent or {}).get("best_name"),
                   "sha256": entry.get("sha256"), "artifact": parent_artifact},
        "changed": {k: list(v) for k, v in (entry.get("changed") or {}).items()},
        "sweep": sweep, "overrides": list(overrides), "tags": list(tags)}


def lineage_json(ckpt: dict, run_dir: Path, origin_: dict, status: str, higher_is_better: bool | None = None) -> dict:
    """lineage.json's content: `origin_` and what the checkpoint dict `ckpt` (as save() builds it) says now, with
    the spread of the last validations from the run dir's metrics.csv and the starts from its environment.json."""
    run_dir = Path(run_dir)
    monitor = ckpt.get("monitor")
    rows = read_rows(run_dir / "metrics.csv")
    scores = noise.last_scores(r.get(f"val_{monitor}") for r in rows if r.get("phase") != "start")
    starts = read_json(run_dir / "environment.json") or []
    config = ckpt.get("config") or {}
    logger = config.get("logger") or {}
    run_id = (ckpt.get("logger") or {}).get("wandb_run_id")
    start = ckpt.get("start_score") or {}
    best = ckpt.get("best_score")
    return {
        "format": FORMAT, "run_dir": str(run_dir.resolve()), **origin_,
        "monitor": monitor,
        "higher_is_better": (not str(monitor).endswith("loss")) if higher_is_better is None else higher_is_better,
        "best": None if best is None or best != best else float(best), "best_epoch": ckpt.get("best_epoch"),
        "epoch": ckpt.get("epoch"), "max_epochs": (config.get("trainer") or {}).get("max_epochs"),
        "spread": noise.spread(scores), "last_mean": statistics.fmean(scores) if scores else None,
        "last_n": len(scores), "start_score": start.get("score"),
        "starts": len(starts) if isinstance(starts, list) else 1,
        "started": starts[0].get("time") if isinstance(starts, list) and starts else None,
        "status": status,
        "wandb": {"run_id": run_id, "artifact": f"model-{run_id}" if logger.get("log_checkpoints") else None}
        if run_id and "Wandb" in str(logger.get("_target_", "")) else None,
        "updated": datetime.now().isoformat(timespec="seconds")}


def write(run_dir: Path, data: dict) -> None:
    """lineage.json, atomically (temp file, rename): a kill leaves the previous one."""
    from project.atomic import write_atomic

    path = Path(run_dir) / FILE
    try:
        write_atomic(path, json.dumps(data, indent=1, default=str))  # no temp file is left holding space
    except OSError as e:  # a full disk or a read-only mount: said as for checkpoints (project/rundir.py)
        from project.rundirs.lock import disk_error

        error = disk_error(e, path)
        if error is None:
            raise
        raise error from None


def begin(run, plan, job: dict) -> dict | None:
    """At the start of training (rank 0): the run's origin. A run continuing its own dir (a requeue, a restart)
    keeps what its lineage.json says; otherwise the plan's checkpoint is the parent."""
    from project import distributed

    if not distributed.current().main:
        return None
    progress, cfg = run.state["progress"], run.cfg
    if plan is not None and plan.is_own:
        old = read_json(run.run_dir / FILE)
        if isinstance(old, dict) and old.get("format") == FORMAT:
            return {k: old.get(k) for k in ("mode", "parent", "changed", "sweep", "overrides", "tags")}
    fresh = plan is not None and not plan.is_own
    return origin(progress.lineage, parent=plan.checkpoint if fresh else None, foreign=plan.foreign if fresh else None,
                  sweep=(job or {}).get("sweep_dir"), overrides=run.overrides, tags=user_tags(cfg),
                  parent_artifact=parent_artifact(plan.checkpoint, plan.path) if fresh else None)


def saved(run, ckpt: dict, files: list[str]) -> None:
    """Called by save() on rank 0 before the write starts (the previous write is on disk): rewrite lineage.json,
    and hand the tracker the checkpoints to log (logger.log_checkpoints)."""
    if getattr(run, "family", None) is None:
        return
    if "final_model.pth" in files:
        status = "early stopped" if ckpt.get("early_stopping", {}).get("stopped") else "done"
    elif run.stop is not None and run.stop.caught and files == ["last.pth"]:
        status = "interrupted"
    else:
        status = "running"
    write(run.run_dir, lineage_json(ckpt, run.run_dir, run.family, status, run.final.higher_is_better))
    run.state["tracker"].checkpoint_saved([run.ckpt_dir / f for f in files], {
        "epoch": ckpt.get("epoch"), "monitor": ckpt.get("monitor"), "best_score": ckpt.get("best_score"),
        "best_epoch": ckpt.get("best_epoch")})


def user_tags(cfg) -> list[str]:
    """The top-level `tags=[...]` typed or preset for this run."""
    return [str(t) for t in (cfg.get("tags") or [])]


def tags(cfg, schedule: list) -> list[str]:
    """What W&B gets: the user's tags, then the framework's (the phase names and the resume mode)."""
    return list(dict.fromkeys([*user_tags(cfg), *(p["name"] for p in schedule), str(cfg.resume.mode)]))


def parent_artifact(saved: dict, path) -> str | None:
    """The W&B model artifact the parent checkpoint was logged as (`model-<run id>:best` for best_model.pth,
    `:latest` otherwise); None when the parent did not log its checkpoints to W&B."""
    logger = ((saved or {}).get("config") or {}).get("logger") or {}
    run_id = ((saved or {}).get("logger") or {}).get("wandb_run_id")
    if not run_id or not logger.get("log_checkpoints") or "Wandb" not in str(logger.get("_target_", "")):
        return None
    return f"model-{run_id}:{'best' if Path(path).name == 'best_model.pth' else 'latest'}"


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
