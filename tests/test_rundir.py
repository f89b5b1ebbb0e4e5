"""Never lose or mix runs (issue 11): one process per run dir, unique run dirs, a full disk and a read-only run
dir, with real processes, real locks and real (tmpfs, read-only bind) mounts."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, load, mount, run_cli
from project.loggers import read_rows

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# long enough to be caught while training: ~10 s of epochs of 400 images
LONG = [o for o in TINY if not o.startswith(("data.train_size", "trainer.max_epochs"))] + [
    "data.train_size=400", "trainer.max_epochs=30", "trainer.save_interval=1", "trainer.keep_last=1"]


def start(*overrides, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *overrides], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


def test_two_runs_started_at_once_get_two_run_dirs(tmp_path):
    procs = [start(*TINY, cwd=tmp_path) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2, runs
    for run in runs:
        assert [r["epoch"] for r in read_rows(run / "metrics.csv")] == ["1", "2"]  # no row twice
        assert load(run / "checkpoints" / "final_model.pth")["run_dir"] == str(run)


def test_a_second_process_on_a_training_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "outputs" / "live"
    first = start(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    try:
        wait_for(run_dir / "checkpoints" / "last.pth", first)
        before = {k: v for k, v in tree(run_dir).items() if k.startswith(".hydra")}
        # the same run dir: refused, the holder named, nothing of the live run touched
        same = run_cli(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
        err = " ".join(same.stderr.split())
        assert same.returncode == 2 and "Traceback" not in err, err
        assert f"is in use by pid {first.pid} on" in err and "Nothing was written" in err, err
        assert {k: v for k, v in tree(run_dir).items() if k.startswith(".hydra")} == before
        assert "is in use by" not in (run_dir / "training.log").read_text()
        # resume=full of the run that is still training: refused before a new run dir is written
        cont = run_cli(*LONG, "resume=full", f"resume.checkpoint={run_dir}", "trainer.max_epochs=40",
                       cwd=tmp_path, check=False)
        err = " ".join(cont.stderr.split())
        assert cont.returncode == 2 and f"pid {first.pid}" in err and "still training" in err, err
        # latest never picks it for resume=full, and says why
        latest = run_cli(*LONG, "resume=full", "trainer.max_epochs=40", cwd=tmp_path, check=False)
        err = " ".join(latest.stderr.split())
        assert latest.returncode == 2 and "still training" in err and str(run_dir) in err, err
        assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["live"]  # refused runs left no dir
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run's lock is gone with its process: the same command takes the dir over and continues it
    again = run_cli(*LONG, f"hydra.run.dir={run_dir}", "trainer.max_epochs=3", cwd=tmp_path)
    assert "Resuming (full) from this run's own" in again.stdout + again.stderr


def mounted(kind: str, path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mount(*(["-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)] if kind == "tmpfs" else
            ["--bind", "-o", "ro", str(path), str(path)]))


@pytest.fixture
def small_tmpfs(tmp_path):
    path = tmp_path / "small"
    mounted("tmpfs", path, "size=4m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_disk_that_fills_during_a_run_ends_cleanly_and_the_run_continues(small_tmpfs, tmp_path):
    run_dir = small_tmpfs / "run"
    proc = start(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / "last.pth", proc)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # take all the space that is left
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    out, _ = proc.communicate(timeout=300)
    text = " ".join(out.split())
    assert proc.returncode == 4 and "Traceback" not in text, out
    assert "No space left on device" in text and "MB free on that file system" in text, out
    assert "The checkpoints written before are intact" in text and f"resume.checkpoint={run_dir}" in text, out
    assert not list(run_dir.rglob("*.tmp")), "a temporary file is left holding the space"
    epoch = load(run_dir / "checkpoints" / "last.pth")["epoch"]
    assert f"last.pth holds epoch {epoch}" in text
    filler.unlink()  # space freed: the printed command continues the run
    cont = run_cli(*LONG, "resume=full", f"resume.checkpoint={run_dir}", f"trainer.max_epochs={epoch + 1}",
                   f"hydra.run.dir={tmp_path / 'continued'}", cwd=tmp_path)
    assert load(tmp_path / "continued" / "checkpoints" / "final_model.pth")["epoch"] == epoch + 1, cont.stdout


def test_a_read_only_run_dir_is_refused_before_training(tmp_path):
    ro = tmp_path / "ro"
    mounted("bind", ro)
    try:
        proc = run_cli(*TINY, f"hydra.run.dir={ro}", cwd=tmp_path, check=False)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert f"The run dir {ro} cannot be written" in err and "read-only file system" in err, err
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_parallel_cpu_jobs_share_the_cores(tmp_path):
    """local_gpus gives each of n_jobs CPU jobs cores // n_jobs threads; a run limited to one core (taskset, a
    SLURM allocation) uses one thread, not torch's default."""
    cores = len(os.sched_getaffinity(0))
    sweep = tmp_path / "sweep"
    run_cli("-m", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=2",
            "model.dropout=0.1,0.2", *[o for o in TINY if not o.startswith(("trainer.num_threads", "model.dropout"))],
            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for job in ("0", "1"):
        start_ = json.loads((sweep / job / "environment.json").read_text())[-1]
        assert start_["cpu_threads"] == max(1, cores // 2), start_
    one_core = subprocess.run(["taskset", "-c", "0", sys.executable, str(ROOT / "run.py"),
                               *[o for o in TINY if not o.startswith("trainer.num_threads")],
                               f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path, env=ENV, capture_output=True)
    assert one_core.returncode == 0, one_core.stderr
    start_ = json.loads((tmp_path / "one" / "environment.json").read_text())[-1]
    assert start_["cores_usable"] == 1 and start_["cpu_threads"] == 1, start_


def test_a_sweep_stopped_by_sigterm_lists_its_jobs_as_interrupted(tmp_path):
    """run.py jobs under local_gpus: SIGTERM to the sweep reaches the jobs, each saves last.pth and ends as
    interrupted (not failed), with the rerun command that continues it."""
    sweep = tmp_path / "sweep"
    proc = start("-m", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=2",
                 "model.dropout=0.1,0.2", *[o for o in LONG if not o.startswith("model.dropout")],
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for job in ("0", "1"):
        wait_for(sweep / job / "checkpoints" / "last.pth", proc)
    before = {job: os.stat(sweep / job / "checkpoints" / "last.pth") for job in ("0", "1")}
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "2 of 2 jobs failed (2 interrupted)" in out, out[-3000:]
    assert out.count(": interrupted: Interrupted: stopped by SIGTERM after saving last.pth") == 2, out[-3000:]
    for job in ("0", "1"):
        last = sweep / job / "checkpoints" / "last.pth"
        saved, now = load(last), os.stat(last)
        assert saved["epoch"] < 30
        # the file found is the one the stop wrote, not the one that was there before the signal: a new file (the
        # atomic write creates it while the old one still exists: another inode) at the position the log names
        assert (now.st_ino, now.st_mtime_ns) != (before[job].st_ino, before[job].st_mtime_ns), f"job {job}"
        caught = re.search(r"Caught SIGTERM: saved \S+last\.pth at epoch (\d+), batch (\d+)/",
                           (sweep / job / "training.log").read_text())
        assert caught and (saved["epoch"], saved["batch_in_epoch"]) == (int(caught[1]) - 1, int(caught[2])), job
        assert "rerun:   python" in out and f"hydra.run.dir={sweep / job}" in out
