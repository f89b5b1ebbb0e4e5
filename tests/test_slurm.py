"""Sweeps on a real SLURM cluster (localhost), and a preempted job that is requeued and resumes by itself."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import ROOT, TINY, assert_resumed, assert_same_state, load, train_tiny

# The preset with what the localhost cluster has: no GPU, 2 cores, the debug partition.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=60"]  # >= 60: submitit counts an interrupt as a preemption, not a timeout


def multirun(sweep_dir, *overrides, cwd):
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "run.py"), "-m", *SLURM, *TINY,
                             f"hydra.sweep.dir={sweep_dir}", *overrides], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def assert_requeued_and_resumed(run_dir, got, steps_per_epoch: int, max_epochs: int) -> None:
    """The job caught USR2 mid-run and saved; the requeued job's restore continued from that save's position."""
    log = (run_dir / "training.log").read_text()  # one log, appended to by the requeued job
    assert log.count("Run dir ") == 2, log
    caught = re.search(r"Caught SIGUSR2: saved (\S+last\.pth) at epoch (\d+), batch (\d+)/(\d+)", log)
    assert caught, log
    epoch, batch, n = int(caught[2]), int(caught[3]), int(caught[4])
    assert n == steps_per_epoch and 0 < batch <= n and epoch <= max_epochs, caught[0]
    assert 1 < epoch < max_epochs or (epoch == max_epochs and batch < n), "the signal came after training ended"
    # the requeued start: epoch - 1 epochs done, and `batch` batches of the next (an epoch's last batch included:
    # its end, validation and save, are still to come)
    assert_resumed(log.split(caught[0])[1], Path(caught[1]).resolve(), (epoch - 1) * steps_per_epoch + batch, got,
                   epoch=epoch - 1, batch=batch, own=True)


def test_slurm_preset_defaults(tmp_path):
    """One GPU and one task per job, requeue on timeout, every field overridable (no cluster needed)."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "hydra/launcher=slurm", "hydra.launcher.nodes=2",
                           "--cfg", "hydra", "--package", "hydra.launcher"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["partition"]) == (1, 1, None)
    assert launcher["max_num_timeout"] > 0 and launcher["timeout_min"] >= 60 and launcher["signal_delay_s"] > 0
    assert launcher["cpus_per_task"] >= 1 and launcher["array_parallelism"] >= 1 and launcher["nodes"] == 2


def test_array_sweep_of_two_jobs(slurm_cluster, tmp_path):
    proc = multirun(tmp_path / "sweep", "model.dropout=0.2,0.25", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    sweep = tmp_path / "sweep"
    assert (sweep / "multirun.yaml").exists()
    array_ids = set()
    for n, dropout in ((0, 0.2), (1, 0.25)):
        final = load(sweep / str(n) / "checkpoints" / "final_model.pth")
        assert final["config"]["model"]["dropout"] == dropout and final["epoch"] == 2
        assert f"model.dropout={dropout}" in yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text())
        (start,) = json.loads((sweep / str(n) / "environment.json").read_text())
        assert start["SLURM_ARRAY_TASK_ID"] == str(n) and start["SLURM_JOB_ID"]
        array_ids.add(start["SLURM_ARRAY_JOB_ID"])
    assert len(array_ids) == 1  # one job array, not two jobs
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")  # the preset reached sbatch
    text = script.read_text()
    for flag in ("--array=0-1%", "--signal=USR2@120", "--time=60", "--ntasks-per-node=1", "--requeue",
                 "--partition=debug", "--cpus-per-task=1"):
        assert flag in text, text


def test_preempted_job_is_requeued_resumes_and_matches(slurm_cluster, tmp_path):
    """USR2 mid-epoch (what SLURM sends before preempting): the job saves last.pth, submitit requeues it, the
    requeued job continues from its own last.pth in the same run dir and ends with the uninterrupted weights."""
    cfg = ["trainer.max_epochs=8", "data.train_size=160"]  # 20 steps per epoch: the signal lands mid-run
    train_tiny(tmp_path / "reference", *cfg, cwd=tmp_path)
    run_dir = tmp_path / "sweep" / "0"
    proc = multirun(tmp_path / "sweep", *cfg, "model.dropout=0.1", cwd=tmp_path)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.pth").exists():  # epoch 1 done: the job is mid-run
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    job_id = json.loads((run_dir / "environment.json").read_text())[0]["SLURM_JOB_ID"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # reaches the job step, as job._interrupt()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    starts = json.loads((run_dir / "environment.json").read_text())
    assert len(starts) == 2, starts  # requeued once, into the same run dir
    assert starts[1]["SLURM_RESTART_COUNT"] == "1" and starts[1]["SLURM_JOB_ID"] == job_id
    assert starts[1]["pid"] != starts[0]["pid"]
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    got = load(run_dir / "checkpoints" / "final_model.pth")
    assert_requeued_and_resumed(run_dir, got, steps_per_epoch=20, max_epochs=8)
    submitit_log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob(f"{job_id}*/*_log.err"))
    assert "this job is preempted" in submitit_log  # not "timed-out": does not use up max_num_timeout
    assert got["epoch"] == 8 and got["global_step"] == ref["global_step"]
    assert_same_state(got, ref)


def test_two_task_job_preempted_is_requeued_and_resumes_on_both_ranks(slurm_cluster, tmp_path):
    """tasks_per_node=2: one job of two gloo ranks from SLURM's tasks (submitit's TorchDistributedEnvironment).
    USR2 reaches both tasks; submitit acts on rank 0 only; the ranks stop at the same step, rank 0 saves, the job
    is requeued, both ranks resume from the same last.pth and end equal to an uninterrupted two-rank job."""
    from test_distributed import torchrun

    # ~10 s of training after epoch 1 (100 steps an epoch): the signal lands mid-run even with SLURM's latency
    cfg = [*[o for o in TINY if not o.startswith(("trainer.num_threads", "data.train_size"))], "trainer.max_epochs=6",
           "data.train_size=800"]
    torchrun(*cfg, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    run_dir = tmp_path / "sweep" / "0"
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "run.py"), "-m", *SLURM, *cfg,
                             "hydra.launcher.tasks_per_node=2", "model.dropout=0.1",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.pth").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    job_id = json.loads((run_dir / "environment.json").read_text())[0]["SLURM_JOB_ID"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    starts = json.loads((run_dir / "environment.json").read_text())
    assert len(starts) == 2 and all(s["world_size"] == 2 for s in starts), starts
    got = load(run_dir / "checkpoints" / "final_model.pth")
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    assert_requeued_and_resumed(run_dir, got, steps_per_epoch=100, max_epochs=6)
    assert got["world_size"] == 2 and got["epoch"] == 6
    assert_same_state(got, ref)
