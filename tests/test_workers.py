"""DataLoader workers on the real data path: data=seg_folder (PNG files, augment=segmentation) with 2 workers.

Stop signals sent to the whole process group (what SLURM, docker stop, Kubernetes and systemd do) reach the
workers too: they ignore them, the main process stops at a step edge mid-epoch, saves, and the run resumes bit for
bit. A worker that really dies (SIGKILL, the OOM killer) ends the run with one paragraph and exit code 5. The
run's loader (project/data/loader.py) keeps its workers across epochs and sends keyed datasets their keys.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, assert_resumed, assert_same_state, load
from project.data.loader import STOP_SIGNALS, RunLoader, TensorSamples, batch_order, is_worker_death

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def write_folder(root: Path, n_train: int, n_val: int, size: int = 24, classes: int = 4) -> Path:
    """ROOT/{train,val}/{images,masks}/NAME.png: noisy images with one coloured square, class-index masks."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            mask[y:y + size // 3, x:x + size // 3] = 1 + i % (classes - 1)
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image[mask > 0] = (60 * mask[mask > 0, None] + 20).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i:03d}.png")
    return root


# 16 steps an epoch of ~30 ms, 6 epochs: a few seconds of training, long enough for signals sent by SLURM to land
def config(data: Path) -> list[str]:
    return ["data=seg_folder", f"data.root={data}", "data.num_workers=2", "data.num_classes=4", "data.image_size=24",
            "augment=segmentation", "model=unet", "model.base_channels=4", "trainer.batch_size=4",
            "trainer.num_threads=1", "trainer.max_epochs=6", "logger=csv"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """The image folder, and the final checkpoint of an uninterrupted run on it (the reference)."""
    tmp = tmp_path_factory.mktemp("workers")
    data = write_folder(tmp / "data", n_train=64, n_val=8)
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *config(data), f"hydra.run.dir={tmp / 'reference'}"],
                          cwd=tmp, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return data, load(tmp / "reference" / "checkpoints" / "final_model.pth")


def workers(pid: int) -> list[int]:
    """The processes `pid` forked and that still run its program (once it trains: its DataLoader workers)."""
    def cmdline(p):
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return None
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    mine = cmdline(pid)
    return [k for k in kids if mine and cmdline(k) == mine]


def wait_for(condition, proc, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)
    return found


def assert_group_gone(pgid: int) -> None:
    """No process of the run's group is left (workers do not outlive the run)."""
    deadline = time.time() + 10
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.time() < deadline, f"processes of group {pgid} outlived the run: {workers(pgid)}"
        time.sleep(0.05)


def started(proc, run_dir: Path) -> None:
    """The run has announced itself: what it forks from now on are its workers (before, a child with its command
    line may be a subprocess between fork and exec, such as ldconfig at torch's import)."""
    log = run_dir / "training.log"
    wait_for(lambda: log.exists() and "Run dir " in log.read_text(), proc, "the run's start")


def start(data: Path, run_dir: Path, cwd: Path) -> subprocess.Popen:
    """run.py as its own process group (a job under SLURM, a container, a systemd unit)."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *config(data), f"hydra.run.dir={run_dir}"],
                            cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_stops_mid_epoch_and_resumes_bit_exact(folder_run, tmp_path, signum):
    """SIGTERM the moment the first worker is forked (while the others are being forked: the signals are blocked
    then, so no worker takes one before it ignores them); SIGINT mid-epoch 2, when the persistent workers have
    served epoch 1 and validation. Both: exit 128 + signal after saving mid-epoch, no worker error; the same command
    again continues from that batch and ends with the uninterrupted run's weights and optimizer state."""
    data, reference = folder_run
    run_dir = tmp_path / "run"
    proc = start(data, run_dir, tmp_path)
    if signum == signal.SIGTERM:
        started(proc, run_dir)
        wait_for(lambda: workers(proc.pid), proc, "DataLoader worker")
    else:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pth").exists(), proc, "epoch 1's checkpoint")
    os.killpg(proc.pid, signum)  # every process of the job: main process and workers
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, out
    name = signal.Signals(signum).name
    caught = re.search(rf"Caught {name}: saved \S+last\.pth at epoch (\d+), batch (\d+)/(\d+)", out)
    assert caught and "Traceback" not in out and "DataLoader worker" not in out, out
    assert_group_gone(proc.pid)
    stopped = load(run_dir / "checkpoints" / "last.pth")
    assert stopped["batch_in_epoch"] == int(caught[2]) > 0 and stopped["epoch"] == int(caught[1]) - 1, out

    cont = subprocess.run([sys.executable, str(ROOT / "run.py"), *config(data), f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert cont.returncode == 0, cont.stdout + cont.stderr
    final = load(run_dir / "checkpoints" / "final_model.pth")
    log = (run_dir / "training.log").read_text()
    assert_resumed(log.split(caught[0])[1], run_dir / "checkpoints" / "last.pth", stopped["global_step"], final,
                   epoch=stopped["epoch"], batch=stopped["batch_in_epoch"], own=True)
    assert f" from batch {stopped['batch_in_epoch']})" in log
    assert final["epoch"] == 6 and final["global_step"] == reference["global_step"]
    assert_same_state(final, reference)


def test_no_workers_train_bit_for_bit_like_two(folder_run, tmp_path):
    """data.num_workers=0 (the loading in the main process) ends with the 2-worker reference's state bit for bit:
    each sample's augmentation depends on its key and epoch, not on which process loaded it."""
    data, reference = folder_run
    overrides = [o for o in config(data) if not o.startswith("data.num_workers")] + ["data.num_workers=0"]
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    final = load(tmp_path / "run" / "checkpoints" / "final_model.pth")
    assert final["config"]["data"]["num_workers"] == 0 and reference["config"]["data"]["num_workers"] == 2
    assert final["epoch"] == 6 and final["global_step"] == reference["global_step"]
    assert_same_state(final, reference)


def test_a_worker_killed_outright_ends_the_run_with_one_paragraph(folder_run, tmp_path):
    """SIGKILL to one worker (what the OOM killer does) after epoch 1 is saved: exit 5 and one paragraph naming
    the intact last.pth and the command to continue, no traceback, no process left behind."""
    data, _ = folder_run
    run_dir = tmp_path / "run"
    proc = start(data, run_dir, tmp_path)
    wait_for(lambda: (run_dir / "checkpoints" / "last.pth").exists(), proc, "epoch 1's checkpoint")
    worker = wait_for(lambda: workers(proc.pid), proc, "DataLoader worker")[0]
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    text = " ".join(out.split())
    assert proc.returncode == 5, out
    assert "Traceback" not in out, out
    assert f"A DataLoader worker died (pid {worker}, killed by SIGKILL) during epoch " in text, out
    assert f"The last intact checkpoint is {run_dir / 'checkpoints' / 'last.pth'} (" in text, out
    assert f"Continue with: python run.py resume=full resume.checkpoint={run_dir} " in text, out
    assert_group_gone(proc.pid)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    load(run_dir / "checkpoints" / "last.pth")


def test_preempted_slurm_job_with_workers_is_requeued_and_resumes_bit_exact(slurm_cluster, folder_run, tmp_path):
    """A preemption as submitit's job._interrupt() sends it (SIGTERM, then USR2) to every process of the job step,
    the DataLoader workers included: the run saves and goes on after SIGTERM with the same workers (submitit
    ignores SIGTERM), saves again at USR2, is requeued, and the requeued job ends with the uninterrupted run's
    weights. (Here USR2 waits for the SIGTERM save, so that both are seen; sent together, the later one stops.)"""
    from test_slurm import SLURM

    data, reference = folder_run
    run_dir = tmp_path / "sweep" / "0"
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "run.py"), "-m", *SLURM, *config(data),
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    env_file = run_dir / "environment.json"
    wait_for(env_file.exists, proc, "the job's start")
    first = json.loads(env_file.read_text())[0]
    wait_for(lambda: workers(first["pid"]), proc, "the job's DataLoader workers")
    log_file = run_dir / "training.log"
    subprocess.run(["scancel", "--signal=TERM", first["SLURM_JOB_ID"]], check=True)
    wait_for(lambda: "Caught SIGTERM" in log_file.read_text(), proc, "the SIGTERM save")  # then trains on
    subprocess.run(["scancel", "--signal=USR2", first["SLURM_JOB_ID"]], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    starts = json.loads(env_file.read_text())
    assert len(starts) == 2 and starts[1]["SLURM_RESTART_COUNT"] == "1", starts
    log = log_file.read_text()
    assert "DataLoader worker" not in log, log
    caught = re.search(r"Caught SIGUSR2: saved \S+last\.pth at epoch (\d+), batch (\d+)/(\d+)", log)
    assert caught, log
    final = load(run_dir / "checkpoints" / "final_model.pth")
    assert_resumed(log.split(caught[0])[1], run_dir / "checkpoints" / "last.pth", 1, final,
                   epoch=int(caught[1]) - 1, batch=int(caught[2]), own=True)
    assert final["epoch"] == 6 and final["global_step"] == reference["global_step"]
    assert_same_state(final, reference)


# ---- the loader itself, in this process ----

class Keyed(torch.utils.data.Dataset):
    """A dataset that takes keys: each sample is its key, and the worker's pid."""
    takes_keys = True

    def __len__(self):
        return 10

    def __getitem__(self, key):
        return torch.tensor(key), torch.tensor(os.getpid())


class Plain(Keyed):
    takes_keys = False


def test_run_loader_sends_keys_keeps_order_and_workers_and_ignores_stop_signals():
    loader = RunLoader(Keyed(), 4, seed=7, num_workers=2)
    try:
        pids = set()
        for epoch, begin in ((0, 0), (1, 1), (2, 0)):  # epoch 1 resumed at its second batch
            batches = list(loader.epoch(epoch, begin))
            want = batch_order(10, 4, 7, epoch)[begin:]
            assert [b[0].tolist() for b in batches] == [[[7, epoch, i] for i in w.tolist()] for w in want]
            pids |= {p for b in batches for p in b[1].tolist()}
            loader.prefetch(epoch + 1)  # as train_epoch does: taken by epoch 2, not by epoch 1 from batch 1
            if epoch == 0:
                workers = [w.pid for w in loader.workers]
                for s in STOP_SIGNALS:  # what a job's process group gets: the workers ignore it
                    for pid in workers:
                        os.kill(pid, s)
                time.sleep(0.2)
        assert pids == set(workers) and all(w.is_alive() for w in loader.workers)  # the same two all along
    finally:
        loader.close()
    assert not loader.workers
    val = RunLoader(Keyed(), 4, seed=0, shuffle=False, num_workers=0)
    assert [k.tolist() for b in val.epoch(0) for k in b[0]] == [[0, 0, i] for i in range(10)]
    plain = RunLoader(Plain(), 4, seed=7, shard=lambda b: b[:2])  # int indices; this rank's part of each batch
    assert [b[0].tolist() for b in plain.epoch(3)] == [w[:2].tolist() for w in batch_order(10, 4, 7, 3)]
    tensors = RunLoader(TensorSamples(torch.arange(10)), 4, seed=7, num_workers=2)  # whole-batch indexing
    assert tensors.loader is None and [b[0].tolist() for b in tensors.epoch(1, 2)] == [
        w.tolist() for w in batch_order(10, 4, 7, 1)[2:]]


def test_a_worker_dying_while_the_others_start_is_reported_once_the_loader_holds_them(monkeypatch):
    """Worker 0 dies at once while the loader is still starting up (slowed down here): torch's SIGCHLD check is
    deferred until the loader holds its iterator, so close() can say who died and end the other worker."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from project.data.loader import ignore_stop_signals

    def first_dies(worker_id):
        ignore_stop_signals(worker_id)
        if worker_id == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    def slow_reset(self, loader, first_iter=False):
        # worker 0 has ended before the loader holds its workers; not reaped, so torch's SIGCHLD check sees it
        deadline = time.time() + 300
        while os.waitid(os.P_PID, self._workers[0].pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            assert time.time() < deadline, "worker 0 did not die"
            time.sleep(0.01)
        return reset(self, loader, first_iter)

    reset = _MultiProcessingDataLoaderIter._reset
    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_reset", slow_reset)
    loader = RunLoader(Keyed(), 2, seed=0, num_workers=2)
    loader.loader.worker_init_fn = first_dies
    with pytest.raises(RuntimeError) as error:
        try:
            loader.epoch(0)
        finally:
            held = loader.loader._iterator is not None
            loader.close()
    assert is_worker_death(error.value) and held, error.value
    assert [code for _, code in loader.died] == [-signal.SIGKILL] and not loader.workers


def test_workers_nobody_closed_do_not_hang_the_exit():
    """Workers ignore SIGTERM, which is how Python ends daemon processes at exit (then joins them): the loader
    ends them first."""
    script = ("from project.data.loader import RunLoader; from test_workers import Keyed; "
              "print(len(list(RunLoader(Keyed(), 4, seed=0, num_workers=2).epoch(0))))")
    done = subprocess.run([sys.executable, "-c", script], env={**ENV, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stdout + done.stderr


def test_a_connection_broken_while_a_worker_ended_is_a_worker_death():
    """A worker killed while it hands a batch's shared memory over breaks the connection the main process reads
    it from (ConnectionResetError, not torch's "DataLoader worker (pid ...) exited" error): a worker death when
    closing the loaders found a worker dead, and not otherwise."""
    from types import SimpleNamespace

    broken = ConnectionResetError(104, "Connection reset by peer")
    assert is_worker_death(broken, [SimpleNamespace(died=[]), SimpleNamespace(died=[(1234, -signal.SIGKILL)])])
    assert not is_worker_death(broken, [SimpleNamespace(died=[])])
    assert not is_worker_death(ValueError("something else"), [SimpleNamespace(died=[(1234, -signal.SIGKILL)])])
