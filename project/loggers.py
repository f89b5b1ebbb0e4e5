"""Per-epoch metric logging (logger=csv). W&B plugs in beside it with the same two methods."""
import csv
from pathlib import Path


class CSVLogger:
    """Append one row per epoch to <run dir>/metrics.csv; columns are fixed by the first row."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "metrics.csv"

    def log_epoch(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            with open(self.path, newline="") as f:
                fields = next(csv.reader(f))
        else:
            fields = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def finish(self) -> None:
        pass


def read_rows(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
