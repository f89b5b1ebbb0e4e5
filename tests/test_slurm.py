"""Sweeps on a real SLURM cluster (localhost), and a preempted job that is requeued and resumes by itself."""
import json
import subprocess
import sys
import time

from conftest import ROOT, TINY, load, same_weights, train_tiny

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=60"]  # >= 60: an interrupt counts as a preemption, not a timeout


def multirun(sweep_dir, *overrides, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *SLURM, *TINY,
                             f"hydra.sweep.dir={sweep_dir}", *overrides], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_array_sweep_of_two_jobs(slurm_cluster, tmp_path):
    proc = multirun(tmp_path / "sweep", "model.dropout=0.2,0.25", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    for n, dropout in ((0, 0.2), (1, 0.25)):
        final = load(tmp_path / "sweep" / str(n) / "checkpoints" / "final_model.pth")
        assert final["config"]["model"]["dropout"] == dropout
        env = json.loads((tmp_path / "sweep" / str(n) / "environment.json").read_text())
        assert env[0]["SLURM_ARRAY_TASK_ID"] == str(n) and env[0]["SLURM_JOB_ID"]


def test_preempted_job_is_requeued_resumes_and_matches(slurm_cluster, tmp_path):
    cfg = ["trainer.max_epochs=5", "data.train_size=160"]
    train_tiny(tmp_path / "reference", *cfg, cwd=tmp_path)
    run_dir = tmp_path / "sweep" / "0"
    proc = multirun(tmp_path / "sweep", *cfg, "model.dropout=0.1", cwd=tmp_path)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.pth").exists():  # epoch 1 done: the job is mid-run
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    job_id = json.loads((run_dir / "environment.json").read_text())[0]["SLURM_JOB_ID"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before preempting
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    starts = json.loads((run_dir / "environment.json").read_text())
    assert len(starts) == 2 and starts[1]["SLURM_RESTART_COUNT"] == "1"  # requeued, same run dir
    log = (run_dir / "training.log").read_text()
    assert "Caught SIGUSR2" in log and "Resuming (full) from this run's own" in log
    saved_at = [line for line in log.splitlines() if "Caught SIGUSR2" in line][0]
    assert "batch" in saved_at
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    got = load(run_dir / "checkpoints" / "final_model.pth")
    assert got["epoch"] == 5 and same_weights(got["model_state_dict"], ref["model_state_dict"])
