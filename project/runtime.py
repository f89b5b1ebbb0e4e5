"""What a run needs from its surroundings: stop signals, the device, its run-dir records."""
import json
import logging
import os
import signal
import socket
from datetime import datetime
from pathlib import Path

import torch

from project.errors import UserError
from project.loggers import append_rows, read_rows

log = logging.getLogger(__name__)


class StopRequest:
    """Stop signals only set a flag; the loop acts at the next step boundary, never inside the handler.

    After saving, a signal that had a Python handler before us (submitit's: USR2 = checkpoint and requeue,
    SIGTERM = ignore and wait for USR2) is handed to it, so the launcher decides what happens next; any other
    signal (a user's SIGTERM or Ctrl-C) ends the run cleanly.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.signum = None
        self.caught = None  # the name of the signal that stopped the run
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name

    def hand_over(self) -> bool:
        """Pass the caught signal to the previous handler; True if training should go on (it returned)."""
        previous = self._previous.get(self.signum)
        signum, self.signum = self.signum, None
        if not callable(previous) or previous is signal.default_int_handler:
            return False
        previous(signum, None)  # submitit's USR2 handler requeues the job and exits here
        return True

    def close(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def restore_history(src: Path, dst: Path, upto_epoch: int) -> None:
    """metrics.csv of a continuation = the rows it continues (epochs <= the checkpoint's), nothing later."""
    rows = [r for r in read_rows(src) if int(r["epoch"]) <= upto_epoch]
    tmp = dst.with_name(".metrics.csv.tmp")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    if tmp.exists():
        os.replace(tmp, dst)


def record_environment(run_dir: Path, device, world_size: int = 1) -> None:
    """Append where and as what this start of the run happened (GPU assignment, SLURM ids, requeues)."""
    path = run_dir / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    keys = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    starts.append({"hostname": socket.gethostname(), "pid": os.getpid(), "device": str(device),
                   "cpu_threads": torch.get_num_threads(), "cores_usable": len(os.sched_getaffinity(0)),
                   "world_size": world_size,
                   **{k: os.environ.get(k) for k in keys}, "time": datetime.now().isoformat(timespec="milliseconds")})
    path.write_text(json.dumps(starts, indent=1))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """trainer.device; `auto` is this rank's GPU (cuda:LOCAL_RANK) when there is one."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)  # an explicit index: DDP and the checkpoint loads need one
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA GPU is visible to this process "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Use trainer.device=auto "
                        "(GPU when there is one) or trainer.device=cpu.")
    return torch.device(name)
