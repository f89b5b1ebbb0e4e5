"""Per-epoch metric logging.

Every logger writes <run dir>/metrics.csv (the run's own record, read by the analysis tools without any
service); logger=wandb (a subclass) also sends the same rows to W&B. The trainer calls, in order:
    logger = instantiate(cfg.logger)(run_dir, meta)   # meta: see train.py, run_meta()
    logger.log_epoch(row)  ...  logger.log_summary(summary)  ...  logger.finish()
and stores logger.state() in every checkpoint, so resume=full can continue the same tracker run.
"""
import csv
from pathlib import Path


class CSVLogger:
    """Append one row per epoch to <run dir>/metrics.csv; columns are fixed by the first row."""

    def __init__(self, run_dir, meta: dict | None = None):
        self.path = Path(run_dir) / "metrics.csv"
        self.meta = meta or {}

    def log_epoch(self, row: dict) -> None:
        append_rows(self.path, [row])

    def log_summary(self, summary: dict) -> None:
        pass

    def state(self) -> dict:
        return {}

    def finish(self, status: str = "done") -> None:
        pass


def append_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    if new:
        fields = list(rows[0])
    else:
        with open(path, newline="") as f:
            fields = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
