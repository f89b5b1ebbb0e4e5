"""project-sweep continue (issue 19, part 2): a stopped sweep finished in its own dir, each job matched to its job
dir by its overrides. Real sweeps (local_gpus, basic, SLURM), real signals; the refusals on constructed sweep dirs
(multirun.yaml and job records) with nothing trained."""
import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY, assert_resumed, assert_same_state, load
from project.loggers import read_rows

# max_epochs and dropout are the sweeps'; 400 images: ~1 s epochs (50 batches) on a quiet 2-core machine
SMALL = [o for o in TINY if not o.startswith(("trainer.max_epochs=", "model.dropout=", "data.train_size="))]
BASE = [*SMALL, "data.train_size=400"]
LOCAL = ["hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=2"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def project_sweep(*args, cwd, timeout=600) -> subprocess.CompletedProcess:
    """project-sweep as a user runs it (a fresh process); the sweep it launches replaces that process."""
    return subprocess.run([sys.executable, "-m", "project.commands.sweep", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def multirun(*overrides, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *overrides], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def files_hash(run_dir: Path, *names) -> dict:
    """sha256 of every checkpoint (and the named files) of a run dir."""
    paths = sorted((run_dir / "checkpoints").glob("*.pth")) + [run_dir / n for n in names]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def epochs(run_dir: Path) -> list[int]:
    return [int(r["epoch"]) for r in read_rows(run_dir / "metrics.csv")]


def dirs_by_job(sweep: Path) -> dict:
    """{(max_epochs, dropout): job dir}, read from each job's own records (not from its number)."""
    found = {}
    for records in sweep.glob("*/.hydra/overrides.yaml"):
        values = dict(o.split("=", 1) for o in yaml.safe_load(records.read_text()))
        found[(int(values["trainer.max_epochs"]), values["model.dropout"])] = records.parents[1]
    return found


def test_a_local_gpus_sweep_stopped_by_sigterm_is_continued(tmp_path):
    """4 jobs on 2 CPU slots: jobs 0 and 1 (1 epoch) finish, jobs 2 and 3 (6 epochs) are stopped by SIGTERM to the
    sweep once both have saved an epoch. project-sweep continue: the finished jobs return "already finished" with
    their files untouched; the interrupted ones continue from their own last.pth without training an epoch twice
    and end bit for bit equal to uninterrupted runs."""
    sweep, ref = tmp_path / "sweep", tmp_path / "ref"
    proc = multirun(*LOCAL, *BASE, "trainer.max_epochs=1,6", "model.dropout=0.1,0.2", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path)
    # the uninterrupted references of the two long jobs, meanwhile (same launcher, same settings)
    references = multirun(*LOCAL, *BASE, "trainer.max_epochs=6", "model.dropout=0.1,0.2", f"hydra.sweep.dir={ref}",
                          cwd=tmp_path)
    long_jobs = [sweep / "2" / "checkpoints", sweep / "3" / "checkpoints"]
    deadline = time.time() + 500
    while not all((c / "last.pth").exists() for c in long_jobs):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    assert not any((c / "final_model.pth").exists() for c in long_jobs), "a long job ended before the signal"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Sweep stopped by SIGTERM" in out and "jobs not started: none" in out, out
    assert f"project-sweep continue {sweep}" in " ".join(out.split()), out  # the command that finishes it
    assert "2 of 4 jobs failed (2 interrupted)" in " ".join(out.split()), out

    jobs = dirs_by_job(sweep)
    assert {k: p.name for k, p in jobs.items()} == {(1, "0.1"): "0", (1, "0.2"): "1", (6, "0.1"): "2", (6, "0.2"): "3"}
    finished = {k: files_hash(jobs[k], "metrics.csv", "environment.json") for k in [(1, "0.1"), (1, "0.2")]}
    stopped = {}
    for k in [(6, "0.1"), (6, "0.2")]:
        log = (jobs[k] / "training.log").read_text()
        stopped[k] = re.search(r"Caught SIGTERM: saved (\S+last\.pth) at epoch (\d+), batch (\d+)/(\d+)", log)
        assert stopped[k] and not (jobs[k] / "checkpoints" / "final_model.pth").exists(), log

    cont = project_sweep("continue", sweep, cwd=tmp_path)
    text = cont.stdout + cont.stderr
    assert cont.returncode == 0, text
    plan = text.split("Launching in")[0]
    assert "with hydra/launcher=local_gpus: 4 jobs (2 finished, 2 interrupted)" in plan, plan
    for line in ["#0 -> 0/  trainer.max_epochs=1 model.dropout=0.1: finished",
                 "#1 -> 1/  trainer.max_epochs=1 model.dropout=0.2: finished",
                 "#2 -> 2/  trainer.max_epochs=6 model.dropout=0.1: interrupted: continues from its own",
                 "#3 -> 3/  trainer.max_epochs=6 model.dropout=0.2: interrupted"]:
        assert line in plan, plan
    assert "Launching 4 jobs locally, 2 at a time" in text, text

    for k, hashes in finished.items():  # untouched, and they said so
        assert files_hash(jobs[k], "metrics.csv", "environment.json") == hashes
        assert "This run already finished (epoch 1); nothing to do." in (jobs[k] / "training.log").read_text()
    assert references.wait(timeout=300) == 0, references.stdout.read()
    for (max_epochs, dropout), caught in stopped.items():
        run_dir = jobs[(max_epochs, dropout)]
        final = load(run_dir / "checkpoints" / "final_model.pth")
        reference = load(ref / ("0" if dropout == "0.1" else "1") / "checkpoints" / "final_model.pth")
        assert final["config"]["model"]["dropout"] == float(dropout) and reference["epoch"] == 6
        assert_same_state(final, reference)  # bit for bit: weights, optimizer, scheduler, RNG, counters
        assert epochs(run_dir) == [1, 2, 3, 4, 5, 6]  # no epoch recorded twice ...
        log = (run_dir / "training.log").read_text()
        epoch, batch = int(caught[2]), int(caught[3])
        # ... nor trained twice: the second start begins where the SIGTERM save stopped
        assert_resumed(log.split(caught[0])[1], Path(caught[1]).resolve(), (epoch - 1) * int(caught[4]) + batch,
                       final, epoch=epoch - 1, batch=batch, own=True)
        assert len(json.loads((run_dir / "environment.json").read_text())) == 2  # two starts

    # continuing it again has nothing to do but say so
    again = project_sweep("continue", sweep, "--dry-run", cwd=tmp_path)
    assert again.returncode == 0 and "4 jobs (4 finished)" in again.stdout, again.stdout + again.stderr


# ---- a basic-launcher sweep, continued with the basic launcher and on SLURM ----

@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    """Two 1-epoch jobs with Hydra's basic launcher (dropout 0.1 and 0.2)."""
    cwd = tmp_path_factory.mktemp("basic")
    proc = multirun(*SMALL, "data.train_size=48", "trainer.max_epochs=1", "model.dropout=0.1,0.2",
                    f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return cwd / "sweep"


def make_half_made(job: Path) -> None:
    """As a job killed (SIGKILL, a lost node) after writing its metrics row, before its first checkpoint."""
    for p in (job / "checkpoints").glob("*.pth"):
        p.unlink()
    with open(job / "metrics.csv", "a") as f:
        f.write("7,train,,,,,,0.999,,\n")


def test_basic_launcher_continue_extends_the_grid_and_restarts_a_half_made_job(basic_sweep):
    """The list extended in front (0.1,0.2 -> 0.05,0.1,0.2): in the new order the new job is #0 and the old ones
    #1 and #2, matched to dirs 0 and 1 by their overrides; the new job gets the lowest free number, 2. Job 1 was
    killed before its first checkpoint (a metrics row, no checkpoint): its dir is cleared and it starts fresh."""
    sweep = basic_sweep
    make_half_made(sweep / "1")
    kept = files_hash(sweep / "0", "metrics.csv")
    cont = project_sweep("continue", sweep, "model.dropout=0.05,0.1,0.2", cwd=sweep.parent)
    text = cont.stdout + cont.stderr
    assert cont.returncode == 0, text
    plan = text.split("Launching in")[0]
    assert "with hydra/launcher=basic: 3 jobs (1 finished, 1 half-made, 1 not started); added to the grid: " \
           "model.dropout 0.05" in plan, plan
    assert "#0 -> 2/  model.dropout=0.05: not started: starts fresh" in plan
    assert "#1 -> 0/  model.dropout=0.1: finished" in plan
    assert "#2 -> 1/  model.dropout=0.2: never checkpointed: starts fresh in a cleared dir (clearing .hydra, " in plan
    assert {load(sweep / n / "checkpoints" / "final_model.pth")["config"]["model"]["dropout"] for n in "012"} == \
        {0.1, 0.2, 0.05} and load(sweep / "2" / "checkpoints" / "final_model.pth")["config"]["model"]["dropout"] == 0.05
    assert files_hash(sweep / "0", "metrics.csv") == kept
    assert "This run already finished (epoch 1)" in (sweep / "0" / "training.log").read_text()
    for n in ("1", "2"):  # trained from scratch: one epoch, one start, no stale row
        assert epochs(sweep / n) == [1] and load(sweep / n / "checkpoints" / "final_model.pth")["lineage"] == []
        assert len(json.loads((sweep / n / "environment.json").read_text())) == 1
    assert "model.dropout=0.05,0.1,0.2" in yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"][
        "overrides"]["task"]


def test_slurm_continue_places_each_array_task_in_its_own_job_dir(slurm_cluster, basic_sweep):
    """--launcher slurm with a value added in front of the list: the array's task 0 is the new job, in the lowest
    free dir; the old jobs keep their dirs and return "already finished" on their nodes. The job-dir lookup travels
    in each job's config to the SLURM node."""
    sweep = basic_sweep
    before = {load(d / "checkpoints" / "final_model.pth")["config"]["model"]["dropout"]: d.name
              for d in sweep.iterdir() if (d / "checkpoints" / "final_model.pth").exists()}
    kept = {n: files_hash(sweep / n, "metrics.csv") for n in before.values()}
    values = ",".join(map(str, [0.3, *sorted(before)]))
    slurm = ["hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60"]
    cont = project_sweep("continue", sweep, "--launcher", "slurm", f"model.dropout={values}", *slurm,
                         cwd=sweep.parent)
    text = cont.stdout + cont.stderr
    assert cont.returncode == 0, text
    new = str(len(before))  # dirs 0 .. len-1 are taken
    assert f"#0 -> {new}/  model.dropout=0.3: not started" in text, text
    final = load(sweep / new / "checkpoints" / "final_model.pth")
    assert final["config"]["model"]["dropout"] == 0.3
    (start,) = json.loads((sweep / new / "environment.json").read_text())
    assert start["SLURM_ARRAY_TASK_ID"] == "0" and start["SLURM_JOB_ID"]  # trained as the array's task 0
    for dropout, n in before.items():
        assert files_hash(sweep / n, "metrics.csv") == kept[n]
        log = (sweep / n / "training.log").read_text()  # its task ran on the node and ended at once
        done = log.rindex("This run already finished (epoch 1); nothing to do.")
        assert log.index("[submitit][INFO] - Job completed successfully", done) > done, log[-800:]
    assert (sweep / ".submitit").is_dir()


# ---- refusals, before anything runs (constructed sweep dirs) ----

def constructed_sweep(root: Path, sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper") -> Path:
    """multirun.yaml as Hydra writes it (the parts project-sweep reads) and two job dirs: job 0 finished
    (final_model.pth), job 1 interrupted (last.pth)."""
    sweep = root / "sweep"
    task = ["trainer.max_epochs=3", "model.dropout=0.1,0.2"]
    (sweep).mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"}, "sweeper": {"_target_": sweeper},
        "overrides": {"hydra": [f"hydra.sweep.dir={sweep}", "hydra.mode=MULTIRUN"], "task": task},
        "runtime": {"cwd": str(root), "choices": {"hydra/launcher": "basic"}}}}))
    for n, (dropout, ckpt) in enumerate((("0.1", "final_model.pth"), ("0.2", "last.pth"))):
        (sweep / str(n) / ".hydra").mkdir(parents=True)
        (sweep / str(n) / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(["trainer.max_epochs=3", f"model.dropout={dropout}"]))
        (sweep / str(n) / "checkpoints").mkdir()
        (sweep / str(n) / "checkpoints" / ckpt).write_bytes(b"weights")
    return sweep


def refused(sweep: Path, *args) -> str:
    """project-sweep continue must exit 2 with one paragraph and change nothing."""
    before = {str(p): p.read_bytes() if p.is_file() else None for p in sorted(sweep.rglob("*"))}
    proc = project_sweep("continue", sweep, *args, cwd=sweep.parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr and proc.stdout == ""
    assert {str(p): p.read_bytes() if p.is_file() else None for p in sorted(sweep.rglob("*"))} == before
    return " ".join(proc.stderr.split())


def test_a_changed_command_is_refused_with_the_difference_named(tmp_path):
    sweep = constructed_sweep(tmp_path)
    message = refused(sweep, "model.dropout=0.3")
    assert "model.dropout=0.3 differs from the sweep's model.dropout=0.1,0.2: it leaves out 0.1, 0.2" in message
    message = refused(sweep, "trainer.max_epochs=5")
    assert "trainer.max_epochs=5 differs from the sweep's trainer.max_epochs=3: it leaves out 3" in message
    message = refused(sweep, "optimizer.lr=0.01")
    assert "optimizer.lr=0.01 is not part of this sweep: its jobs ran without optimizer.lr" in message
    assert "hydra.sweep.dir=elsewhere changes Hydra's settings" in refused(sweep, "hydra.sweep.dir=elsewhere")
    assert "--launcher joblib is not a launcher" in refused(sweep, "--launcher", "joblib")
    # what may be typed: the sweep's own values (1e-1 is 0.1), an extension, launcher settings
    ok = project_sweep("continue", sweep, "model.dropout=0.2,1e-1", "hydra.launcher.n_jobs=3", "--dry-run",
                       cwd=tmp_path)
    assert ok.returncode == 0 and "2 jobs (1 finished, 1 interrupted)" in ok.stdout, ok.stdout + ok.stderr


def test_what_cannot_be_continued_is_refused(tmp_path):
    sweep = constructed_sweep(tmp_path / "a")
    # a job dir that is not a job of the sweep
    (sweep / "7" / ".hydra").mkdir(parents=True)
    (sweep / "7" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["trainer.max_epochs=3",
                                                                           "model.dropout=0.5"]))
    assert f"The job dir {sweep / '7'} ran model.dropout=0.5, which is not a job of this sweep" in refused(sweep)
    (sweep / "7" / ".hydra" / "overrides.yaml").unlink()
    (sweep / "7" / ".hydra").rmdir()
    (sweep / "7").rmdir()

    # a job still training: its dir is locked by a live process (here: this test's)
    fd = os.open(sweep / "1" / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": "here", "since": "now"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        message = refused(sweep)
        assert f"The job dir {sweep / '1'} is in use by pid {os.getpid()} on here" in message
        assert "Stop it first" in message
    finally:
        os.close(fd)

    # an Optuna search: out of scope, and said so
    optuna = constructed_sweep(tmp_path / "b", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert "Optuna searches are out of scope for project-sweep continue" in refused(optuna)
    # not a sweep dir
    proc = project_sweep("continue", sweep / "0", cwd=tmp_path)
    assert proc.returncode == 2 and "has no multirun.yaml, so it is not a sweep dir" in " ".join(proc.stderr.split())
    assert "pass its parent" in " ".join(proc.stderr.split())



# ---- continued from a regular (non-editable) install ----

def regular_install(root: Path) -> tuple[subprocess.Popen, Path, str]:
    """pip install . (not -e) of a copy of the repository into a new venv, root/venv, that reuses this test's
    packages through a .pth file instead of copying torch: (the running pip, the .pth file, its text). The copy
    holds what the package is built from, so the installed package has no run.py or conf/ beside it, as in a
    Docker image or a cluster module. With setuptools here the build runs in the venv (--no-build-isolation) and
    the .pth is written first; else pip builds in an isolated env and the caller writes the .pth once pip is done
    (our setuptools must not mix with the one pip fetches)."""
    import importlib.util
    import shutil

    source = root / "source"
    source.mkdir(parents=True)
    for name in ("project", "hydra_plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = Path(site) / "_test_packages.pth"
    packages = "\n".join(p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()) + "\n"
    version = tuple(map(int, __import__("setuptools").__version__.split(".")[:2])) \
        if importlib.util.find_spec("setuptools") else (0, 0)
    # setuptools builds wheels itself from 70.1; from 64 to 70.0 with the wheel package
    local = version >= (70, 1) or version >= (64, 0) and importlib.util.find_spec("wheel") is not None
    if local:
        pth.write_text(packages)
    pip = subprocess.Popen([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                            *(["--no-build-isolation"] if local else []), str(source.resolve())],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return pip, pth, packages


def test_a_sweep_started_from_the_repository_is_continued_by_an_installed_project_sweep(tmp_path):
    """python run.py -m from the repository, killed (SIGKILL) once job 0 has saved an epoch; project-sweep continue
    from a regular install (no run.py beside the package), typed in another directory: it launches the run.py the
    jobs recorded, says so, and the sweep ends: job 0 continued from its last.pth, job 1 trained."""
    pip, pth, packages = regular_install(tmp_path / "install")  # meanwhile
    sweep = tmp_path / "sweep"
    proc = multirun(*SMALL, "data.train_size=48", "trainer.max_epochs=3", "model.dropout=0.1,0.2",
                    f"hydra.sweep.dir={sweep}", cwd=ROOT)
    deadline = time.time() + 300
    while not (sweep / "0" / "checkpoints" / "last.pth").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (sweep / "0" / "checkpoints" / "final_model.pth").exists()
    assert pip.wait(timeout=600) == 0, pip.stdout.read()
    pth.write_text(packages)

    elsewhere = tmp_path / "elsewhere"  # not the repository: no run.py here
    elsewhere.mkdir()
    cont = subprocess.run([str(tmp_path / "install" / "venv" / "bin" / "project-sweep"), "continue", str(sweep)],
                          cwd=elsewhere, env={k: v for k, v in ENV.items() if k != "PYTHONPATH"},
                          capture_output=True, text=True, timeout=600)
    text = cont.stdout + cont.stderr
    assert cont.returncode == 0, text
    plan = text.split("Launching in")[0]
    assert f"run.py: {ROOT / 'run.py'} (the run.py that launched the sweep)" in plan, plan
    assert "#0 -> 0/  model.dropout=0.1: interrupted: continues from its own checkpoints/last.pth" in plan, plan
    for job in ("0", "1"):
        assert epochs(sweep / job) == [1, 2, 3], text  # job 0: no epoch twice
        assert load(sweep / job / "checkpoints" / "final_model.pth")["epoch"] == 3

    # Another script's file opened by the installed package: its config is composed from the conf/ of the
    # repository the command is typed in; typed anywhere else, a paragraph says where conf/ must come from.
    foreign = tmp_path / "their_best_model.pth"
    weights = load(sweep / "0" / "checkpoints" / "final_model.pth")["model_state_dict"]
    torch.save({"model_state_dict": weights, "best_f_score": 0.5}, foreign)
    code = ("import sys\nfrom project.checkpoints.loading import load_model\nfrom project.errors import UserError\n"
            f"try:\n    model, cfg = load_model({str(foreign)!r}, overrides={SMALL!r})\n"
            "except UserError as e:\n    sys.exit(f'REFUSED {e}')\n"
            "print('loaded', type(model).__name__, cfg.data.image_size)")
    python = tmp_path / "install" / "venv" / "bin" / "python"
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    here = subprocess.run([str(python), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert here.returncode == 0 and "loaded MicroSegFormer 32" in here.stdout, here.stdout + here.stderr
    away = subprocess.run([str(python), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert away.returncode == 1 and "REFUSED" in away.stderr, away.stdout + away.stderr
    assert f"nor in the working directory ({elsewhere})" in away.stderr and "run.py and conf/" in away.stderr
