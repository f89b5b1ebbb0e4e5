"""What a run needs from its surroundings: stop signals, the device, its run-dir records."""
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
from datetime import datetime
from importlib import metadata
from pathlib import Path

import torch

from project.atomic import replacing, write_atomic
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
    if rows:  # none: the file is left as it is
        with replacing(dst) as tmp:
            append_rows(tmp, rows)


def record_environment(run_dir: Path, device, world_size: int = 1, trainer=None, cwd: Path | None = None) -> dict:
    """Append where, as what and from what code this start of the run happened (GPU assignment, SLURM ids,
    requeues; the GPU switches in effect; git commits, a dirty tree's diff as code.diff, package versions).
    Returns the provenance ({"code", "versions"}) that each checkpoint of this start carries."""
    path = run_dir / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    keys = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    code, diff = code_provenance(Path.cwd() if cwd is None else cwd, run_dir)
    if diff:
        code["diff"] = write_diff(run_dir, diff, start=len(starts) + 1)
    summary = {"code": code, "versions": versions()}
    starts.append({"hostname": socket.gethostname(), "pid": os.getpid(), "device": str(device),
                   "cpu_threads": torch.get_num_threads(), "cores_usable": len(os.sched_getaffinity(0)),
                   "world_size": world_size,
                   **{k: os.environ.get(k) for k in keys}, "time": datetime.now().isoformat(timespec="milliseconds"),
                   "switches": switches_in_effect(trainer), **summary})
    write_atomic(path, json.dumps(starts, indent=1))
    return summary


# --- the GPU switches (Lightning's names): process-wide torch settings, set at every start -------------------------

CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the cuBLAS workspace settings deterministic algorithms accept


def apply_switches(t) -> None:
    """trainer.float32_matmul_precision and trainer.benchmark, and what trainer.deterministic needs before any
    GPU work: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it first runs, so it is set here, before the model is
    built. Each setting is set either way (null/false = torch's default): a process that builds several runs
    (a benchmark, in-process sweep jobs) never carries one run's setting into the next. Deterministic algorithms
    themselves are turned on by use_deterministic() once the run is built."""
    torch.set_float32_matmul_precision(t.get("float32_matmul_precision") or "highest")
    torch.backends.cudnn.benchmark = bool(t.get("benchmark"))
    set_deterministic_algorithms(False)
    if t.get("deterministic") and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if t.get("deterministic") and t.get("benchmark"):
        log.info("trainer.benchmark=true with trainer.deterministic=%s: cuDNN autotunes among its deterministic "
                 "algorithms only.", t.get("deterministic"))


def use_deterministic(t) -> None:
    """trainer.deterministic: true = torch.use_deterministic_algorithms(True), an op without a deterministic
    implementation raises (see nondeterministic_error); warn = it warns and runs; false/null = off."""
    mode = t.get("deterministic")
    set_deterministic_algorithms(bool(mode), warn_only=mode == "warn")


def set_deterministic_algorithms(on: bool, warn_only: bool = False) -> None:
    """torch.use_deterministic_algorithms, called only when it changes the setting: the call imports
    torch._inductor (most of a second at every process start) only to mirror the flag in inductor's config."""
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
            != (on, warn_only):
        torch.use_deterministic_algorithms(on, warn_only=warn_only)


def switches_in_effect(t) -> dict:
    """What environment.json records: the configured switches and torch's settings as they are now."""
    configured = {k: (t.get(k) if t is not None else None)
                  for k in ("float32_matmul_precision", "benchmark", "deterministic", "channels_last")}
    return {**configured, "torch": {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}}


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """trainer.channels_last: the 4-D parameters and buffers in channels-last memory format, and every 4-D
    input the model is called with (training, validation, EMA copy) converted on the way in. Checkpoints keep the
    standard layout: checkpoint.snapshot() makes every tensor contiguous."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(channels_last_inputs)
    return model


def channels_last_inputs(module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


NONDETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")


def nondeterministic_error(error: BaseException, device=None) -> UserError | None:
    """trainer.deterministic=true met an op torch has no deterministic implementation of (on a GPU: the segmentation
    loss's nll_loss2d forward, the first one a default run meets on an H200 with torch 2.11, and the backward of
    bilinear upsampling): one paragraph naming the op and the switch that lets it run."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        match = NONDETERMINISTIC.search(str(error))
        if match:
            return UserError(
                f"trainer.deterministic=true, but this run uses {match[1]}, which has no deterministic implementation "
                f"{'on ' + str(device) + ' ' if device is not None else ''}(torch: \"{match[0]}\"). On a GPU the "
                "default models meet such ops: the per-pixel cross-entropy (nll_loss2d) and the backward of bilinear "
                "upsampling. Run with "
                "trainer.deterministic=warn (torch warns and runs those ops non-deterministically, everything else "
                "stays deterministic), or trainer.deterministic=false.")
        error = error.__cause__ or error.__context__
    return None


# --- what a run was made from: git commits of the working directory and of the project package, versions ---------

GIT_TIMEOUT_S = 10          # each git call; a hung network file system must not hold a run's start
DIFF_CAP_BYTES = 1_000_000  # code.diff is cut here (a note at its end says so)
UNTRACKED_LISTED = 1000     # untracked file names listed in code.diff, at most


class GitUnavailable(Exception):
    """Why there is no commit to record (git absent, refused, timed out, not a work tree): a reason, never an error."""


def git(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}  # no index.lock: a commit next door goes on
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, errors="replace", env=env,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise GitUnavailable("git is not installed (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitUnavailable(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from None
    except OSError as e:
        raise GitUnavailable(f"git could not be run: {e}") from None
    if proc.returncode != 0:
        err = " ".join(proc.stderr.split())
        if "dubious ownership" in err:
            raise GitUnavailable(f"git refuses {cwd}: dubious ownership (another user owns the repository); allow it "
                                 "with git config --global --add safe.directory <repository>")
        if "not a git repository" in err:
            raise GitUnavailable("not a git work tree")
        raise GitUnavailable(f"git {' '.join(args)} failed: {err[:300] or f'exit status {proc.returncode}'}")
    return proc.stdout


def repository(path: Path, run_dir: Path | None = None) -> tuple[dict, str]:
    """({"path", "root", "commit", "branch", "dirty", "modified", "untracked"} or {"path", "reason"}, diff text).
    The run's own output (an untracked outputs/ or the run dir itself) is not a change to the code: left out."""
    path = Path(path).resolve()
    own = {Path(run_dir).resolve(), *Path(run_dir).resolve().parents} if run_dir is not None else set()
    try:
        root = git(["rev-parse", "--show-toplevel"], path).strip()
        try:
            commit = git(["rev-parse", "HEAD"], path).strip()
        except GitUnavailable:
            commit = None  # a repository without a commit yet
        branch = git(["rev-parse", "--abbrev-ref", "HEAD"], path).strip() if commit else None
        status = [line for line in git(["status", "--porcelain", "--untracked-files=normal"], path).splitlines()
                  if not (line.startswith("?? ") and (Path(root) / line[3:].strip('"')).resolve() in own)]
        untracked = [line[3:] for line in status if line.startswith("?? ")]
        modified = len(status) - len(untracked)
        diff = ""
        if status:
            diff = git(["diff", "HEAD", "--no-color", "--no-ext-diff"], path) if commit else ""
            shown = untracked[:UNTRACKED_LISTED]
            diff = (f"# repository {root}, commit {commit or 'none yet'}: git diff HEAD"
                    + (f", then {len(untracked)} untracked file(s)" if untracked else "") + "\n" + diff
                    + "".join(f"# untracked: {name}\n" for name in shown)
                    + (f"# ... and {len(untracked) - len(shown)} more untracked\n" if len(untracked) > len(shown) else ""))
    except GitUnavailable as e:
        return {"path": str(path), "commit": None, "dirty": None, "reason": str(e)}, ""
    return {"path": str(path), "root": root, "commit": commit, "branch": branch, "dirty": bool(status),
            "modified": modified, "untracked": len(untracked)}, diff


def code_provenance(cwd: Path, run_dir: Path | None = None) -> tuple[dict, str]:
    """The working directory's repository and the project package's ({"same_repository": true} when they are
    one), and the diff text of the dirty ones."""
    import project

    working, diff = repository(cwd, run_dir)
    package, package_diff = repository(Path(project.__file__).resolve().parent, run_dir)
    if package.get("root") and package.get("root") == working.get("root"):
        package = {"path": package["path"], "same_repository": True}
    else:
        diff += package_diff
    return {"working_dir": working, "project": package}, diff


def write_diff(run_dir: Path, diff: str, start: int) -> dict:
    """code.diff (cut at DIFF_CAP_BYTES, with a note); a later start of the run whose code differs writes
    code.start<N>.diff instead of replacing the first."""
    data = diff.encode()
    truncated = len(data) > DIFF_CAP_BYTES
    if truncated:
        data = data[:DIFF_CAP_BYTES].rsplit(b"\n", 1)[0] + (
            f"\n# code.diff cut at {DIFF_CAP_BYTES} bytes: the diff was {len(diff.encode())} bytes; "
            "git diff HEAD in the repository shows the rest\n").encode()
    name = "code.diff"
    first = run_dir / name
    if first.exists() and first.read_bytes() != data:
        name = f"code.start{start}.diff"
    write_atomic(run_dir / name, data)
    return {"file": name, "bytes": len(diff.encode()), "truncated": truncated}


def versions() -> dict:
    """The versions a run was made with (installed distributions read from their metadata: nothing imported)."""
    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cudnn = cudnn_version()
    # plain str and int only: a checkpoint must load with weights_only=True (torch.__version__ is a str subclass)
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": installed("torchvision"), "cuda": None if torch.version.cuda is None else str(torch.version.cuda),
            "cudnn": None if cudnn is None else int(cudnn), "hydra-core": installed("hydra-core"),
            "omegaconf": installed("omegaconf"), "wandb": installed("wandb"), "project": installed("project")}


def cudnn_version() -> int | None:
    """cuDNN's version as torch.backends.cudnn.version() says it (9.24.0 is 92400); None in a build without cuDNN.
    Without a GPU the version torch was built against is read instead: asking the library loads it, which a CPU
    run that never uses it pays with ~50 MB of resident memory. It is the library torch loads on a GPU, unless
    another cuDNN was installed beside it."""
    if not torch.backends.cudnn.is_available():
        return None
    if torch.cuda.is_available():
        return torch.backends.cudnn.version()
    major, minor, patch = torch._C._cudnn.getCompileVersion()
    return major * 10000 + minor * 100 + patch  # cuDNN 9's encoding (torch's own builds need cuDNN >= 9)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The one device choice (training's trainer.device, the commands' and benchmarks' --device): `auto` is this
    rank's GPU (cuda:LOCAL_RANK) when there is one, else the CPU; `cuda` without a visible GPU is a UserError."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)  # an explicit index: DDP and the checkpoint loads need one
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA GPU is visible to this process "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Use trainer.device=auto "
                        "(GPU when there is one) or trainer.device=cpu.")
    return torch.device(name)
