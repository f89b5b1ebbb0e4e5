"""Shared helpers: tests drive the real command line (python run.py ...) in a temporary working directory, each run
its own process (run_cli forks it from a warm one: tests/forked_runs.py; docs/architecture.md, "The tests")."""
import atexit
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# setup.cfg runs the suite in two workers (-n 2): each shares the cores with the other and with the processes tests
# start. OpenMP threads that wait by spinning burn the core another process needs (two runs at once with torch's
# default threads: 7-10x slower, docs/performance.md); waiting passively costs a run alone little. Set before torch
# is imported, and inherited by every process a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

# in CI, a skip not on tests/allowed_skips.txt fails the session (its hooks, run as this file's)
from skip_guard import (pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish,  # noqa: F401
                        pytest_terminal_summary)
from skip_guard import unavailable
import forked_runs  # noqa: E402
from slurm_cluster import slurm_cluster  # noqa: F401  (the one SLURM fixture: a cluster that does not start fails)

ROOT = Path(__file__).resolve().parents[1]
# Small enough for ~1 s epochs on 2 CPU cores, with dropout on so RNG restore matters.
# logger=csv: W&B has its own tests (test_wandb.py); here it would only add start-up time to every run
TINY_TRAINER = ["trainer.batch_size=8", "trainer.num_threads=1", "trainer.max_epochs=2", "logger=csv"]
TINY_DATA = ["data.train_size=48", "data.val_size=16", "data.image_size=32", *TINY_TRAINER]
TINY = TINY_DATA + ["model=microsegformer", "model.embed_dims=[8,16,32]", "model.num_heads=[1,1,2]", "model.decoder_dim=16",
                    "model.dropout=0.1"]


# python run.py as a process forked from a warm one (tests/forked_runs.py); TESTS_FORKED_RUNS=0: every run a fresh
# interpreter, as before
FORKED = forked_runs.Server(ROOT) if os.environ.get("TESTS_FORKED_RUNS", "1") != "0" else None
if FORKED is not None:
    atexit.register(FORKED.close)


def run_cli(*overrides, cwd: Path, env_extra=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """run.py with `overrides` in `cwd`, its output captured. Forked from a warm process unless `env_extra` asks
    for something an interpreter reads when it starts (tests/forked_runs.py)."""
    wandb_home = cwd / "wandb_home"  # never online, never the developer's own W&B settings
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline",
           "WANDB_DIR": str(wandb_home), "WANDB_CACHE_DIR": str(wandb_home / "cache"),
           "WANDB_CONFIG_DIR": str(wandb_home / "config"), "WANDB_DATA_DIR": str(wandb_home / "data"),
           **(env_extra or {})}
    argv = [str(ROOT / "run.py"), *overrides]
    proc = FORKED.run(argv, cwd, env, timeout) if FORKED is not None and not env_extra else None
    if proc is None:
        proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(overrides)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def stop_with_sigterm(run_dir: Path, *overrides, cwd: Path, env_extra=None) -> str:
    """Start run.py with `overrides` in `run_dir`, send SIGTERM once its first epoch is saved (a user's kill, a
    preemption); return what it printed. It must exit 143 (128 + SIGTERM) after saving."""
    cmd = [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})})
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.pth").exists():  # epoch 1 done
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Caught SIGTERM" in out, out  # 128 + SIGTERM, after saving
    return out


def mount(*args: str) -> None:
    """`mount *args` (a tmpfs, a read-only bind mount) for the full-disk and read-only tests. Where it cannot be
    done the test fails with mount's own words in CI as root, and skips elsewhere (skip_guard.unavailable)."""
    if os.geteuid() != 0:
        unavailable("needs root and mount (CI runs as root)")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"mount {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")


def train_tiny(run_dir: Path, *overrides, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return run_cli(*TINY, f"hydra.run.dir={run_dir}", *overrides, cwd=cwd, **kwargs)


def training_rows(path) -> list[dict]:
    """metrics.csv's rows (a run dir or the file) without the throughput columns (perf_*): how fast the machine
    trained an epoch differs between two runs of the same training; nothing else in a row may."""
    path = Path(path)
    with open(path / "metrics.csv" if path.is_dir() else path, newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("perf_")} for row in csv.DictReader(f)]


def load(path):
    return torch.load(path)  # as users do: torch's default weights_only=True


def tensors(value):
    """Every tensor in a checkpoint's tree."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def parent_run(tmp_path_factory):
    """One finished tiny run (2 epochs) that continuation tests start from; treat it as read-only."""
    cwd = tmp_path_factory.mktemp("parent")
    run_dir = cwd / "outputs" / "parent"
    train_tiny(run_dir, "trainer.save_interval=1", "trainer.keep_last=1", cwd=cwd)
    return run_dir


# What a seamless continuation must reproduce: every tensor and value of these entries (Adam's exp_avg,
# exp_avg_sq and step included; the scheduler; the RNG states; the scaler and the EMA copy when present).
WHOLE_STATE = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng", "scaler_state_dict",
               "ema_state_dict", "ema_updates", "epoch", "global_step", "best_epoch")


def assert_same(a, b, where="checkpoint"):
    """Recursive equality, tensors bit for bit (dtype included); a list or dict of another length fails."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state (see WHOLE_STATE); keys absent from both are skipped."""
    for key in WHOLE_STATE:
        assert (key in a) == (key in b), f"{key} only in one checkpoint"
        if key in a:
            assert_same(a[key], b[key], key)
    assert a["optimizer_state_dict"]["state"], "no optimizer state to compare"


# The start line announce() prints after the restore: the epochs the run starts at, and for a checkpoint written
# mid-epoch the batch it continues the next epoch from. A restore that loaded nothing prints "epochs 0 -> N".
START_LINE = re.compile(r"\| epochs (\d+) -> (\d+)(?: \(epoch (\d+) from batch (\d+)\))?")


def start_lines(log_text: str) -> list[tuple[int, int]]:
    """(epoch, batch) of every start in a log: the epochs finished and the batches of the next one already trained."""
    return [(int(m[1]), int(m[4] or 0)) for m in START_LINE.finditer(log_text)]


def assert_resumed(log_text: str, checkpoint_path, from_step: int, resumed: dict, *, epoch: int | None = None,
                   batch: int | None = None, own: bool = False) -> None:
    """The run really continued `checkpoint_path`: the plan named it (the log; the lineage of the `resumed`
    checkpoint), and the start line printed after the restore shows the checkpoint's position, "epochs E -> N",
    plus " (epoch E+1 from batch B)" for a checkpoint written mid-epoch. A run whose restore loaded nothing starts
    at "epochs 0 -> N" with no batch and fails this, even where it would end equal to a reference.

    `epoch`, `batch`: the checkpoint's finished epochs and the batches of the next epoch it had trained (0: an
    epoch's end); by default read from `checkpoint_path`, which must still hold step `from_step`: pass them where
    the file was overwritten since (a run that continued in its own run dir).
    `own`: a requeued or restarted job continuing its own run dir (the log says "this run's own"; a run continuing
    itself adds no lineage entry). Slice `log_text` to begin at the start that should be a resume.
    """
    assert from_step > 0, "a resume test needs a checkpoint that has trained"
    if epoch is None or batch is None:
        saved = torch.load(checkpoint_path)
        assert saved["global_step"] == from_step, (
            f"{checkpoint_path} holds step {saved['global_step']}, not {from_step}: pass epoch= and batch=")
        epoch = saved["epoch"] if epoch is None else epoch
        batch = saved.get("batch_in_epoch", 0) if batch is None else batch
    names = [f"from {checkpoint_path}"] + ([f"from this run's own {checkpoint_path}"] if own else [])
    at = min((log_text.find(n) for n in names if n in log_text), default=-1)
    assert at >= 0, f"the log does not name {checkpoint_path}"
    start = START_LINE.search(log_text, at)
    assert start, f"no start line ('| epochs E -> N') after the log names {checkpoint_path}"
    got = (int(start[1]), int(start[4] or 0))
    assert got == (epoch, batch), (
        f"started at {start[0]!r}: epoch {got[0]} batch {got[1]}, but {checkpoint_path} holds epoch {epoch} batch "
        f"{batch} (the restore did not load the position)")
    if batch:
        assert int(start[3]) == epoch + 1, start[0]
    if not own:
        assert resumed["lineage"][-1]["path"] == str(checkpoint_path)
        assert resumed["lineage"][-1]["global_step"] == from_step


def assert_continued_from(got: dict, parent: dict, lr: float) -> None:
    """`got` continued `parent`'s weights and Adam state with its steps since (global_step) at a learning rate of
    at most `lr`: every Adam `step` count went on from the parent's, and every weight is within those steps of the
    parent's. One Adam step moves a weight by at most lr * 7.3 (|m_hat / sqrt(v_hat)| <= (1 - b1) / sqrt(1 - b2)
    * 1 / sqrt(1 - b1^2 / b2) for betas (0.9, 0.999), by Cauchy-Schwarz) plus lr * weight_decay * |w|: far less
    than the parent's own training moved it from the initial weights, so a restore that dropped or misnamed the
    weights (the run trained from its initial ones) fails. For where a resumed run changes a value (the LR, the
    metric, the epochs) and no uninterrupted run can equal it."""
    steps = got["global_step"] - parent["global_step"]
    assert steps > 0, "no step taken since the parent"
    parent_steps = {float(s["step"]) for s in parent["optimizer_state_dict"]["state"].values()}
    got_steps = {float(s["step"]) for s in got["optimizer_state_dict"]["state"].values()}
    assert got_steps == {s + steps for s in parent_steps}, f"Adam steps {got_steps}, parent's {parent_steps} + {steps}"
    bound = steps * lr * 7.3 * 1.01 + 1e-7
    a, b = got["model_state_dict"], parent["model_state_dict"]
    assert a.keys() == b.keys(), "the weights' names differ"
    names = [n for g in parent["optimizer_state_dict"]["param_groups"] for n in g["param_names"]]
    assert names and set(names) <= a.keys()
    for key in names:  # the parameters: buffers (BatchNorm statistics) follow the data, not the LR
        far = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        assert far <= bound * max(1.0, b[key].double().abs().max().item()), (
            f"{key} is {far:.3g} from the parent's, more than {steps} steps at lr {lr} can move it: not restored")
