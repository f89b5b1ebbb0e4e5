"""Per-epoch metric logging.

Every logger writes <run dir>/metrics.csv (the run's own record, read by the analysis tools without any
service); logger=wandb (a subclass) also sends the same rows to W&B. The trainer calls, in order:
    logger = instantiate(cfg.logger)(run_dir, meta)   # meta: see train.py, run_meta()
    logger.load_state_dict(saved)                     # resume=full only: the tracker run to continue
    logger.start()
    logger.log_epoch(row)  ...  logger.log_summary(summary)  ...  logger.finish()
The logger is the training state's "tracker" entry: logger.state_dict() goes into every checkpoint, so
resume=full can continue the same tracker run.
"""
import csv
import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from urllib.parse import urlsplit

from project.atomic import replacing

log = logging.getLogger(__name__)


class NullTracker:
    """A tracker that records nothing: the entry of the ranks other than 0 in a several-process job (rank 0 logs
    the job), and the base of the others."""

    def start(self) -> None:
        pass

    def log_epoch(self, row: dict) -> None:
        pass

    def log_per_class(self, row: dict) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def checkpoint_saved(self, paths: list, info: dict) -> None:
        """A save of `paths` (checkpoint files) starts now; the files of the previous call are on disk by now
        (train.py's save() waits for the previous write first). `info`: epoch, monitor, best_score, best_epoch."""
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def finish(self, status: str = "done") -> None:
        pass


class CSVLogger(NullTracker):
    """Append one row per epoch to <run dir>/metrics.csv; the columns are those of the first row, widened when a
    later phase reports another metric."""

    def __init__(self, run_dir, meta: dict | None = None):
        self.path = Path(run_dir) / "metrics.csv"
        self.meta = meta or {}

    def log_epoch(self, row: dict) -> None:
        append_rows(self.path, [row])

    def log_per_class(self, row: dict) -> None:
        """One row per validation in per_class.csv: epoch, phase, then <metric>/<class name> columns."""
        append_rows(self.path.with_name("per_class.csv"), [row])


class WandbLogger(CSVLogger):
    """metrics.csv as CSVLogger, and one W&B run per training run in <run dir>/wandb/.

    W&B is optional to the run: if it cannot start, or fails later, one warning is logged and training goes
    on with metrics.csv alone. resume=full continues the W&B run id stored in the checkpoint (load_state_dict),
    so a continued curve stays one line; reset_optimizer starts a new run whose config names its parent.

    log_checkpoints=true: the checkpoints become versions of the model artifact `model-<run id>`: best_model.pth at
    each new best (alias `best`), once it is on disk, and at the end the last one (final_model.pth, or last.pth
    for a run that stopped early; alias `latest`). A continuation names its parent's artifact in its config
    (`parent.artifact`) and, online, declares it as its input (use_artifact), so W&B's lineage view draws the
    family; offline W&B refuses use_artifact, so the config is where the name is.
    """

    def __init__(self, run_dir, meta: dict | None = None, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, log_checkpoints: bool = False, init_timeout: float = 20,
                 finish_timeout: float = 600):
        super().__init__(run_dir, meta)
        import wandb  # here, not at the top: only logger=wandb pays for the import

        self.wandb, self.run_dir, self.log_checkpoints = wandb, Path(run_dir), log_checkpoints
        self.summary, self.run, self.started = None, None, False
        self.pending = []  # best checkpoints saved, logged as artifacts once on disk (the next save, or finish)
        self.mode = mode
        meta = self.meta
        # our own id, known before W&B answers: a checkpoint can name the run even if W&B never started
        self.run_id = new_run_id()
        config = dict(meta.get("config") or {})
        parent = meta.get("parent")
        if parent:
            config["parent"] = {"checkpoint": parent["checkpoint"],
                                "run_id": (parent.get("logger") or {}).get("wandb_run_id"),
                                "best_score": parent["best_score"], "best_epoch": parent["best_epoch"],
                                "artifact": parent.get("artifact")}
        self.init_args = {
            "dir": str(self.run_dir), "project": project or os.environ.get("WANDB_PROJECT") or "project",
            "entity": entity, "resume": "allow",
            # W&B rejects names and groups over 128 characters and tags over 64 (HTTP 400 at init); a sweep
            # directory keeps its end (the date and time), which tells sweeps apart
            "name": clip(meta.get("run_name") or "", 128) or None,
            "group": clip(meta.get("group") or "", 128, tail=True) or None,
            "job_type": meta.get("job_type"), "tags": sorted({clip(t, 64) for t in meta.get("tags") or []}),
            "config": config,
            # several jobs in one process (Hydra's basic launcher): a run a crashed job left open must not
            # swallow the next job's metrics (W&B's default for scripts returns the open run)
            "reinit": "finish_previous",
        }
        self.settings = {"init_timeout": init_timeout, "login_timeout": init_timeout, "finish_timeout": finish_timeout}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the W&B run a checkpoint names (before start(): W&B needs the id at init)."""
        if self.started:
            raise RuntimeError("load the tracker state before start(): W&B takes the run id at init")
        if state_dict.get("wandb_run_id"):
            self.run_id = state_dict["wandb_run_id"]
            self.init_args["allow_val_change"] = True

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.init_args["id"] = self.run_id
        self.run = self._start(self.mode or mode_from_environment())
        parent = self.meta.get("parent")
        if self.run is not None and parent:
            self.run.summary["parent_best"] = parent["best_score"]
            if parent.get("artifact") and not self.run.offline:
                try:  # the parent's model artifact as this run's input: W&B's lineage view draws the family
                    self.run.use_artifact(parent["artifact"])
                except Exception as e:  # e.g. the parent's artifact was never uploaded (an offline parent)
                    log.warning("W&B could not declare the parent's artifact %s as input (%s); its name is in the "
                                "run config as parent.artifact.", parent["artifact"], first_line(e))

    def _start(self, mode: str):
        """wandb.init in `mode`; if online fails (no network, bad key, server down), once more offline."""
        try:
            return self.wandb.init(mode=mode, settings=self.wandb.Settings(**self.settings), **self.init_args)
        except Exception as e:  # W&B raises CommError, UsageError, TimeoutError, ...: none may stop training
            error = first_line(e)
        if mode == "online":
            self._teardown()  # the failed attempt still holds the run id in W&B's service process
            log.warning("W&B is unreachable (%s); logging run %s offline instead. Upload it later with: "
                        "wandb sync %s/wandb/offline-run-*", error, self.run_id, self.run_dir)
            try:
                return self.wandb.init(mode="offline", settings=self.wandb.Settings(**self.settings),
                                       **self.init_args)
            except Exception as e:
                error = first_line(e)
        log.warning("W&B could not start (%s); this run is logged to %s only.", error, self.path)
        return None

    def _teardown(self) -> None:
        try:
            self.wandb.teardown()
        except Exception:  # nothing left to clean up
            pass

    def log_epoch(self, row: dict) -> None:
        super().log_epoch(row)
        self.start()
        self._call(lambda run: run.log(wandb_row(row), step=int(row["epoch"])))

    def log_per_class(self, row: dict) -> None:
        super().log_per_class(row)
        scores = {f"val/{k}": v for k, v in row.items() if k not in ("epoch", "phase") and v == v}  # NaN: absent
        self._call(lambda run: run.log(scores, step=int(row["epoch"])))

    def log_summary(self, summary: dict) -> None:
        self.summary = summary
        self.start()
        self._call(lambda run: run.summary.update(wandb_summary(summary)))

    def checkpoint_saved(self, paths: list, info: dict) -> None:
        """The summary gets the best so far (the runs table sorts by it while runs train); with
        log_checkpoints, the best checkpoint saved before (on disk now) becomes an artifact version."""
        if info.get("monitor") and info.get("best_score") is not None:
            self._call(lambda run: run.summary.update({f"best_val_{info['monitor']}": info["best_score"],
                                                       "best_epoch": info.get("best_epoch")}))
        if not self.log_checkpoints or self.run is None:
            return
        pending, self.pending = self.pending, [(Path(p), dict(info)) for p in paths if Path(p).name == "best_model.pth"]
        for path, saved in pending:
            self._call(lambda run: self._log_file(run, path, ["best"], saved))

    def _log_file(self, run, path: Path, aliases: list[str], info: dict) -> None:
        if not path.is_file():
            return
        artifact = self.wandb.Artifact(f"model-{self.run_id}", type="model",
                                       metadata={"file": path.name, **{k: v for k, v in info.items() if v is not None}})
        artifact.add_file(str(path), name=path.name)  # copied to W&B's staging area now: a later save may replace it
        run.log_artifact(artifact, aliases=aliases)

    def state_dict(self) -> dict:
        return {"wandb_run_id": self.run_id}

    def finish(self, status: str = "done") -> None:
        """Always end the W&B run, so a sweep never waits on a dangling one; never raises."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            if self.log_checkpoints:
                self._log_checkpoints(run, status)
            if status == "interrupted":
                run.mark_preempting()  # W&B shows "preempted"; resume=full continues the same run
            # train.py logs the summary as the last step of training: none means an exception ended it
            failed = status == "failed" or self.summary is None
            run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            log.warning("W&B did not finish cleanly (%s); the local copy is in %s/wandb.", first_line(e), self.run_dir)

    def _log_checkpoints(self, run, status: str) -> None:
        """At the end (train.py has waited for the last write): the best still pending, then the last checkpoint."""
        for path, info in self.pending:
            self._log_file(run, path, ["best"], info)
        self.pending = []
        final = self.run_dir / "checkpoints" / "final_model.pth"
        last = final if status == "done" and final.is_file() else self.run_dir / "checkpoints" / "last.pth"
        summary = self.summary or {}
        self._log_file(run, last, ["latest"], {k: summary.get(k) for k in ("monitor", "best_score", "best_epoch",
                                                                           "epoch", "status")})

    def _call(self, action) -> None:
        if self.run is None:
            return
        try:
            action(self.run)
        except Exception as e:
            log.warning("W&B logging failed (%s); the rest of this run goes to %s only.", first_line(e), self.path)
            self.finish("failed")


def mode_from_environment() -> str:
    """WANDB_MODE if set; else online when an API key is at hand (WANDB_API_KEY or `wandb login`), else offline."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's older names for the modes
    return "online" if os.environ.get("WANDB_API_KEY") or stored_api_key() else "offline"


def stored_api_key() -> bool:
    """`wandb login` keeps the key in ~/.netrc (or $NETRC) under the API host."""
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_row(row: dict) -> dict:
    """train_loss -> train/loss, val_f_score -> val/f_score, perf_step_ms -> perf/step_ms: W&B draws one panel
    section per prefix. Empty values (an epoch without validation, trainer.eval_interval > 1) are left out: a ""
    would turn W&B's numeric series into text."""
    out = {}
    for key, value in row.items():
        if value == "" or value is None:
            continue
        for prefix in ("train_", "val_", "perf_"):
            if key.startswith(prefix):
                key = f"{prefix[:-1]}/{key[len(prefix):]}"
                break
        out[key] = value
    return out


def wandb_summary(summary: dict) -> dict:
    metric = f"val_{summary.get('monitor')}"
    out = {"status": summary.get("status"), "epochs": summary.get("epoch"), f"best_{metric}": summary.get("best_score"),
           "best_epoch": summary.get("best_epoch")}
    for key in ("start_score", "parent_best", "improvement"):
        if key in summary:
            out[key] = summary[key]
    if len(summary.get("phase_best") or {}) > 1:
        out["phase_best"] = summary["phase_best"]
    out.update({k: v for k, v in summary.items() if k.startswith("test/")})  # trainer.test_after_fit's scores
    out.update({k: v for k, v in summary.items() if k.startswith("perf/")})  # the run's mean throughput
    return out


def clip(text: str, limit: int, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "..." + text[-(limit - 3):] if tail else text[:limit - 3] + "..."


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no detail'}"


def append_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    try:
        _append_rows(path, rows)
    except OSError as e:  # a full disk or a read-only mount: say so plainly (project/rundir.py)
        from project.rundirs.lock import disk_error

        error = disk_error(e, path)
        if error is None:
            raise
        raise error from None


def _append_rows(path: Path, rows: list[dict]) -> None:
    fields = header(path)
    wider = fields + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in fields]
    if fields and wider != fields:
        # a phase with another metric (f_score after pretraining's recon_loss): rewrite the file with the wider
        # header, old rows with empty cells, rather than drop the new columns
        rows = read_rows(path) + rows
        with replacing(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=wider)
            writer.writeheader()
            writer.writerows(rows)
        return
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=wider)
        if not fields:
            writer.writeheader()
        writer.writerows(rows)


def header(path: Path) -> list[str]:
    """The columns of an existing metrics.csv; [] for a missing or empty file."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_rows(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
