"""Sweeps: Hydra's basic launcher and our hydra/launcher=local_gpus (fresh process per job, GPU pool, failures).

The run.py tests train tiny models in real processes. The launcher's scheduling, failure and signal behaviour is
tested with a toy Hydra app that only sleeps and records what it saw: fast, and timings that do not depend on
training speed on a loaded 2-core machine.
"""
import csv
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import yaml

from conftest import ROOT, TINY, assert_continued_from, assert_resumed, load, run_cli, same_weights

GRID = ["model.dropout=0.2,0.25", "optimizer.weight_decay=2e-4,3e-4"]
LOCAL = ["hydra/launcher=local_gpus"]


def sweep(sweep_dir, *overrides, cwd, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *TINY, f"hydra.sweep.dir={sweep_dir}",
                           *overrides], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def jobs(sweep_dir):
    """Job number -> what its run dir holds: final checkpoint, environment.json starts, end time."""
    out = {}
    for run in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()):
        final = run / "checkpoints" / "final_model.pth"
        starts = json.loads((run / "environment.json").read_text()) if (run / "environment.json").exists() else []
        out[int(run.name)] = {"dir": run, "final": final if final.exists() else None, "env": starts,
                              "end": final.stat().st_mtime if final.exists() else None}
    return out


def check_grid(sweep_dir):
    """Hydra's sweep layout, 4 finished runs with metrics, each trained with its own swept values."""
    sweep_dir = Path(sweep_dir)
    assert (sweep_dir / "multirun.yaml").exists()
    runs = jobs(sweep_dir)
    assert sorted(runs) == [0, 1, 2, 3] and all(r["final"] for r in runs.values()), runs
    swept = set()
    for n, r in runs.items():
        config = load(r["final"])["config"]
        value = (config["model"]["dropout"], config["optimizer"]["weight_decay"])
        swept.add(value)
        overrides = yaml.safe_load((r["dir"] / ".hydra" / "overrides.yaml").read_text())
        typed = dict(o.split("=", 1) for o in overrides)  # the job's own overrides, saved by Hydra's run_job
        assert (float(typed["model.dropout"]), float(typed["optimizer.weight_decay"])) == value, typed
        assert yaml.safe_load((r["dir"] / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"] == n
        rows = list(csv.DictReader(open(r["dir"] / "metrics.csv")))
        assert [row["epoch"] for row in rows] == ["1", "2"]
        assert (r["dir"] / "checkpoints" / "last.pth").exists() and (r["dir"] / "training.log").exists()
    assert swept == {(0.2, 2e-4), (0.2, 3e-4), (0.25, 2e-4), (0.25, 3e-4)}
    # and each trained with them: four different results (the same run four times would match itself)
    weights = [load(r["final"])["model_state_dict"] for r in runs.values()]
    assert not any(same_weights(a, b) for a, b in itertools.combinations(weights, 2))
    return runs


def interval(run):
    """(start, end) of a job: its recorded start and its final checkpoint's write time."""
    return datetime.fromisoformat(run["env"][0]["time"]).timestamp(), run["end"]


def most_at_once(spans):
    """The largest number of (start, end) spans that contain a common instant."""
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


def test_grid_with_the_basic_launcher(tmp_path):
    sweep(tmp_path / "sweep", *GRID, cwd=tmp_path)
    runs = check_grid(tmp_path / "sweep")
    assert len({r["env"][0]["pid"] for r in runs.values()}) == 1  # Hydra's basic launcher: one process, in turn
    assert most_at_once([interval(r) for r in runs.values()]) == 1


def test_grid_with_local_gpus_two_at_a_time_on_the_cpu(tmp_path):
    # ~1 s epochs: long enough that two jobs surely overlap in time (a tiny run trains for 0.2 s, less than the
    # jitter of two processes' start-up)
    sweep(tmp_path / "sweep", *LOCAL, "hydra.launcher.n_jobs=2", *GRID, "data.train_size=400", cwd=tmp_path)
    runs = check_grid(tmp_path / "sweep")
    assert all(r["env"][0]["CUDA_VISIBLE_DEVICES"] == "" for r in runs.values())  # CPU jobs see no GPU
    assert len({r["env"][0]["pid"] for r in runs.values()}) == 4  # a fresh process per job
    assert os.getpid() not in {r["env"][0]["pid"] for r in runs.values()}
    assert most_at_once([interval(r) for r in runs.values()]) == 2  # two ran at once, never three


def test_gpu_pool_gives_each_running_job_its_own_gpu(tmp_path):
    """gpus=[0,1] on a machine without GPUs: the assignment is still made and recorded (torch then sees no GPU
    and trains on the CPU), so the pool logic is tested here too."""
    sweep(tmp_path / "sweep", *LOCAL, "hydra.launcher.gpus=[0,1]", *GRID, cwd=tmp_path)
    runs = check_grid(tmp_path / "sweep")
    gpu = {n: r["env"][0]["CUDA_VISIBLE_DEVICES"] for n, r in runs.items()}
    assert set(gpu.values()) == {"0", "1"}
    assert {r["env"][0]["device"] for r in runs.values()} == {"cpu"}
    for g in ("0", "1"):  # never two jobs on one GPU at the same time
        assert most_at_once([interval(runs[n]) for n in runs if gpu[n] == g]) == 1, gpu


def test_a_failing_job_is_reported_and_the_others_complete(tmp_path):
    proc = sweep(tmp_path / "sweep", *LOCAL, "hydra.launcher.n_jobs=2", "model.dropout=0.2,1.5", "trainer.max_epochs=1",
                 cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "1 of 2 jobs failed" in out and "#1" in out and "model.dropout=1.5: failed: UserError" in out
    assert f"run dir: {tmp_path / 'sweep' / '1'}" in out
    assert f"rerun:   python {ROOT / 'run.py'} hydra.run.dir={tmp_path / 'sweep' / '1'}" in out
    runs = jobs(tmp_path / "sweep")
    assert runs[0]["final"] is not None and runs[1]["final"] is None


# ---- Ctrl-C ----

def run_py(*args, cwd) -> subprocess.Popen:
    """run.py in a process group of its own, as a terminal starts a command: Ctrl-C signals the whole group."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_until(condition, proc, what: str, timeout=300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None and time.time() < deadline, f"no {what}:\n{proc.stdout.read()}"
        time.sleep(0.02)


def test_ctrl_c_stops_a_sweep_each_job_saves_and_one_continues(tmp_path):
    """One SIGINT to the sweep's process group (the launcher and both running jobs) once both train: each job
    finishes its step, saves last.pth mid-run and is reported interrupted, not failed; the sweep starts nothing
    more and exits 1; resume=full continues a stopped job from the batch it stopped at."""
    sweep_dir = tmp_path / "sweep"
    proc = run_py("-m", *LOCAL, "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=2", *TINY, "data.train_size=400",
                  "trainer.max_epochs=30", "model.dropout=0.1,0.2", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    wait_until(lambda: all((sweep_dir / j / "checkpoints" / "last.pth").exists() for j in "01"), proc,
               "epoch 1 of both jobs")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    text = " ".join(out.split())
    assert proc.returncode == 1, out
    assert "Sweep stopped by SIGINT" in text and "jobs not started: none" in text, out
    assert "2 of 2 jobs failed (2 interrupted)" in text and "Traceback" not in out, out
    for job, dropout in (("0", 0.1), ("1", 0.2)):
        assert re.search(rf"#{job} .*model.dropout={dropout}: interrupted: Interrupted: stopped by SIGINT after "
                         r"saving last\.pth", out), out
        caught = re.search(r"Caught SIGINT: saved \S+last\.pth at epoch (\d+), batch (\d+)/(\d+)",
                           (sweep_dir / job / "training.log").read_text())
        saved = load(sweep_dir / job / "checkpoints" / "last.pth")
        assert caught and (saved["epoch"], saved["batch_in_epoch"]) == (int(caught[1]) - 1, int(caught[2])), out
        assert saved["batch_in_epoch"] > 0 and not (sweep_dir / job / "checkpoints" / "final_model.pth").exists()

    stopped = sweep_dir / "1" / "checkpoints" / "last.pth"
    saved = load(stopped)
    cont = run_cli("resume=full", f"resume.checkpoint={sweep_dir / '1'}", f"trainer.max_epochs={saved['epoch'] + 1}",
                   "scheduler=none", "optimizer.lr=1e-5",  # a small LR: see assert_continued_from
                   f"hydra.run.dir={tmp_path / 'continued'}", cwd=tmp_path)
    final = load(tmp_path / "continued" / "checkpoints" / "final_model.pth")
    assert final["epoch"] == saved["epoch"] + 1 and final["config"]["model"]["dropout"] == 0.2
    assert_resumed(cont.stdout, stopped, saved["global_step"], final)
    assert_continued_from(final, saved, lr=1e-5)  # its weights and Adam state, not only its counters


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (Linux: SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return bool(int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M)[1], 16) >> (signum - 1) & 1)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C waits for the step boundary (here the end of the epoch's one accumulation window, 50
    batches of 32 images of 128 px: ~10 s of training, longer on a loaded machine) to save; a second one means
    "now": KeyboardInterrupt from the stop handler in the middle of the window, nothing saved, the process killed
    by SIGINT."""
    run_dir = tmp_path / "run"
    proc = run_py(*TINY, "data.image_size=128", "data.train_size=1600", "trainer.batch_size=32",
                  "trainer.accumulate_grad_batches=50", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    # the stop handlers (runtime.StopRequest) are in place once run.py catches SIGUSR1, which nothing else in it
    # does; the window starts right after, and they are given back (SIGUSR1 uncaught) as the run unwinds
    wait_until(lambda: catches(proc.pid, signal.SIGUSR1), proc, "stop handlers")
    while proc.poll() is None and catches(proc.pid, signal.SIGUSR1):
        # Ctrl-C again until it ends: two presses that reach a busy process together are one signal, and one
        # press only sets the stop flag
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGINT, out  # what a shell reports as 130
    assert 'raise KeyboardInterrupt  # a second Ctrl-C means "now"' in out and "Caught SIGINT" not in out, out
    # raised inside the window, not at its end: it stopped at once, without waiting for the step boundary
    assert "in train_epoch" in out and "in stop_here" not in out, out
    assert not (run_dir / "checkpoints" / "last.pth").exists(), "it waited for the window's end and saved"


# ---- the launcher itself, with a toy app ----

TOY_APP = '''
import json, os, signal, sys, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

def wait_until(ready, what):
    deadline = time.time() + 600  # generous: reached only where the launcher is broken
    while not ready():
        if time.time() > deadline:
            sys.exit(f"toy job: no {what} after 600 s")
        time.sleep(0.05)

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    record = {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": time.time(),
              "leak": os.environ.get("TOY_LEAK"), "num": HydraConfig.get().job.num}
    os.environ["TOY_LEAK"] = "set by an earlier job in this process"
    signal.signal(signal.SIGTERM, lambda *_: (out / "got_sigterm").touch() or sys.exit(0))
    (out / "started").touch()
    if cfg.get("hold"):  # running until the test writes <sweep dir>/release
        wait_until(lambda: (out.parent / "release").exists(), "release")
    if cfg.get("together"):  # running until that many jobs of the sweep have started: proof they run at once
        wait_until(lambda: len(list(out.parent.glob("*/started"))) >= cfg.together, f"{cfg.together} jobs at once")
    time.sleep(cfg.sleep)
    record["end"] = time.time()
    (out / "job.json").write_text(json.dumps(record))
    if cfg.get("fail") == "exit":
        sys.exit(2)  # what run.py does on a user error outside a sweep
    if cfg.get("fail") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.get("fail") == "raise":
        raise ValueError("bad value")
    return "x" * (cfg.get("big", 0))  # a return value larger than a pipe's buffer must not block the job

if __name__ == "__main__":
    main()
'''


def toy_sweep(tmp_path, *overrides, sweep_dir="sweep", popen=False):
    """Run the toy app as a sweep; the launcher comes from the installed package (plugin discovery)."""
    app = tmp_path / "toy_app.py"
    app.write_text(textwrap.dedent(TOY_APP))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    cmd = [sys.executable, str(app), "-m", *LOCAL, *([f"hydra.sweep.dir={sweep_dir}"] if sweep_dir else []),
           *overrides]
    if popen:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def toy_jobs(sweep_dir):
    return {int(p.parent.name): json.loads(p.read_text()) for p in Path(sweep_dir).glob("*/job.json")}


def test_gpu_pool_hands_a_freed_gpu_to_the_next_job_at_once(tmp_path):
    """Job 0 holds GPU 0 until the test releases it, which it does once jobs 1-4 have all finished: they must go
    through GPU 1 meanwhile, one at a time. A pool that waited for job 0 (batches of len(gpus) jobs) never runs
    them, and the test ends at its deadline."""
    sweep_dir = tmp_path / "sweep"
    proc = toy_sweep(tmp_path, "hydra.launcher.gpus=[0,1]", "+hold=true,false,false,false,false", "+sleep=0.2",
                     popen=True)
    wait_until(lambda: len(list(sweep_dir.glob("*/job.json"))) == 4, proc, "end of jobs 1-4 while job 0 runs",
               timeout=600)
    assert not (sweep_dir / "0" / "job.json").exists()  # job 0 still holds GPU 0
    (sweep_dir / "release").touch()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    runs = toy_jobs(sweep_dir)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    assert runs[0]["cuda"] == "0" and all(runs[n]["cuda"] == "1" for n in (1, 2, 3, 4)), runs
    assert runs[4]["end"] < runs[0]["end"]  # not waiting for job 0: no batches of len(gpus) jobs
    spans = sorted((r["start"], r["end"]) for n, r in runs.items() if n)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # GPU 1: one at a time
    assert len({r["pid"] for r in runs.values()}) == 5 and not any(r["leak"] for r in runs.values())


def test_jobs_per_gpu_spreads_over_the_gpus_before_sharing(tmp_path):
    """Each job runs until all four have started: a launcher running fewer than 4 at once fails them at their
    deadline."""
    proc = toy_sweep(tmp_path, "hydra.launcher.gpus=[0,1]", "hydra.launcher.jobs_per_gpu=2", "+together=4,4,4,4",
                     "+sleep=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = toy_jobs(tmp_path / "sweep")
    assert sorted(r["cuda"] for r in runs.values()) == ["0", "0", "1", "1"]
    assert most_at_once([(r["start"], r["end"]) for r in runs.values()]) == 4
    assert {runs[0]["cuda"], runs[1]["cuda"]} == {"0", "1"}  # the first two jobs on different GPUs


def test_exit_kill_and_exception_fail_their_job_only(tmp_path):
    """sys.exit(2) (run.py's user-error exit), SIGKILL (out of memory) and an exception each fail their own
    job; the others complete, a 1 MB return value comes back, and the sweep exits with 1 naming the failures.
    No hydra.sweep.dir: the default multirun/${now:...} must resolve in the jobs' processes."""
    proc = toy_sweep(tmp_path, "+sleep=0", "+fail=none,exit,kill,raise", "+big=1000000", "hydra.launcher.n_jobs=2",
                     sweep_dir=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert (sweep_dir / "multirun.yaml").exists() and sorted(toy_jobs(sweep_dir)) == [0, 1, 2, 3]
    assert "3 of 4 jobs failed" in out
    assert "#1 +sleep=0 +fail=exit +big=1000000: failed: its process exited with code 2 without a result" in out
    assert "#2 +sleep=0 +fail=kill +big=1000000: failed: its process was killed by SIGKILL without a result" in out
    assert "#3 +sleep=0 +fail=raise +big=1000000: failed: ValueError: bad value" in out
    assert "#0 " not in out.split("jobs failed")[1]


def test_sigterm_to_the_sweep_stops_running_jobs_and_starts_no_more(tmp_path):
    proc = toy_sweep(tmp_path, "+hold=true", "+sleep=0", "+x=1,2,3,4", "hydra.launcher.n_jobs=2", popen=True)
    wait_until(lambda: len(list((tmp_path / "sweep").glob("*/started"))) >= 2, proc, "two running jobs")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/got_sigterm")) == ["0", "1"]
    assert not (tmp_path / "sweep" / "2").exists() and not (tmp_path / "sweep" / "3").exists()
    assert "Sweep stopped by SIGTERM" in out and "jobs not started: [2, 3]" in out
