"""One job on several processes (issue 12), on the CPU with gloo and real torchrun processes
(`python -m torch.distributed.run`, as the venv's torchrun may not be on PATH)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import (ROOT, TINY, assert_continued_from, assert_resumed, assert_same, assert_same_state, load,
                      run_cli, training_rows)
from project.loggers import read_rows

# the math is the same on 1 and 2 processes: no dropout, no Dice (a per-batch ratio), no BatchNorm (tests/tiny_nets.py;
# batch statistics of a shard are not those of the global batch)
SAME_MATH = [o for o in TINY if not o.startswith(("model", "trainer.num_threads"))] + [
    "model=custom", "model._target_=tiny_nets.NoNormNet", "loss.dice_weight=0"]
ENV = {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def torchrun(*overrides, cwd, nproc=2, check=True, timeout=600, popen=False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "run.py"), *overrides]
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def test_two_processes_write_one_run_dir_and_match_one_process(tmp_path):
    torchrun(*SAME_MATH, cwd=tmp_path)
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, f"one job, one run dir: {runs}"
    run = runs[0]
    assert [r["epoch"] for r in read_rows(run / "metrics.csv")] == ["1", "2"]
    two = load(run / "checkpoints" / "final_model.pth")
    assert two["world_size"] == 2 and not any(k.startswith("module.") for k in two["model_state_dict"])
    assert not list(run.glob("rank_*.log")), "ranks other than 0 write only errors"
    run_cli(*SAME_MATH, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env_extra=ENV)
    one = load(tmp_path / "one" / "checkpoints" / "final_model.pth")
    diff = max((two["model_state_dict"][k].float() - v.float()).abs().max().item()
               for k, v in one["model_state_dict"].items())
    assert diff < 1e-4, f"2 processes vs 1 with the same global batch: max abs weight difference {diff}"
    assert two["global_step"] == one["global_step"]
    assert abs(two["val_f_score"] - one["val_f_score"]) < 0.01
    # the logs show the job's numbers: train loss averaged, train metric counts summed over the ranks
    for a, b in zip(read_rows(run / "metrics.csv"), read_rows(tmp_path / "one" / "metrics.csv")):
        for key in ("train_loss", "train_f_score", "train_pixel_acc", "val_f_score"):
            assert abs(float(a[key]) - float(b[key])) < 1e-3, (key, a[key], b[key])


def test_accumulation_under_ddp_matches_one_process(tmp_path):
    """Gradients are all-reduced once per accumulation window (no_sync inside it): still the same updates."""
    torchrun(*SAME_MATH, "trainer.accumulate_grad_batches=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    run_cli(*SAME_MATH, "trainer.accumulate_grad_batches=2", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path,
            env_extra=ENV)
    two, one = (load(tmp_path / d / "checkpoints" / "final_model.pth") for d in ("two", "one"))
    assert two["global_step"] == one["global_step"] == 2 * 48 // 16
    diff = max((two["model_state_dict"][k] - v).abs().max().item() for k, v in one["model_state_dict"].items())
    assert diff < 1e-4, diff


def _count_syncs(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo job, spawned by the test below: the run built as run.py builds it, one epoch
    trained with accumulate_grad_batches=2, every all-reduce of DDP's gradient buckets recorded by a communication
    hook with the optimizer step it belongs to."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as torch_dist
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from project import distributed
    from project.recipe import loop, setup
    from project.runtime import StopRequest

    distributed.init(60)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*SAME_MATH, "trainer.accumulate_grad_batches=2"])
    run = setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), [], None, Path(out_dir) / "run", {})
    syncs = []

    def counting(state, bucket):
        syncs.append([run.state["progress"].global_step, bucket.index()])
        return allreduce_hook(None, bucket)

    run.ddp.register_comm_hook(None, counting)
    run.stop = StopRequest()
    try:
        loop.train_epoch(run, 0)
    finally:
        run.stop.close()
    steps = run.state["progress"].global_step
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"syncs": syncs, "steps": steps}))
    torch_dist.destroy_process_group()


def test_accumulation_all_reduces_once_per_window(tmp_path):
    """no_sync inside an accumulation window, counted: 6 global batches, 2 a window, so 3 optimizer steps and one
    all-reduce of the gradients each, in the backward of the window's last batch (6 without no_sync)."""
    import torch.multiprocessing

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_count_syncs, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["steps"] == 48 // 16
        # bucket 0 of each all-reduce, with the optimizer steps taken before it: one a window, none inside one
        assert [step for step, bucket in got["syncs"] if bucket == 0] == [0, 1, 2], got


def test_sync_batchnorm_on_the_cpu_is_a_clear_error(tmp_path):
    proc = torchrun(*TINY, "trainer.sync_batchnorm=true", cwd=tmp_path, check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "trainer.sync_batchnorm=true needs GPUs" in out, out[-3000:]


def test_two_ranks_stopped_by_sigterm_resume_bit_exact_and_on_one_rank(tmp_path):
    cfg = [*[o for o in TINY if not o.startswith(("trainer.num_threads", "data.train_size", "trainer.max_epochs"))],
           "data.train_size=400", "trainer.max_epochs=3"]
    torchrun(*cfg, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    run_dir = tmp_path / "stopped"
    proc = torchrun(*cfg, f"hydra.run.dir={run_dir}", cwd=tmp_path, popen=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.pth").exists():  # epoch 1 done
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # what a preemption does: every process of the job gets it
    out, _ = proc.communicate(timeout=120)
    assert "Caught SIGTERM" in out, out[-5000:]
    # torchrun's agent, signalled too, stops its workers and exits 1 (torch's SignalException), whatever the ranks'
    # own 128 + 15: a rank that failed instead would have written rank_1.log, and rank 0 would not say "Stopped."
    assert proc.returncode == 1 and "SignalException" in out and "got signal: 15" in out, out[-5000:]
    assert "Stopped. Continue with" in out and not list(run_dir.glob("rank_*.log")), out[-5000:]
    saved = load(run_dir / "checkpoints" / "last.pth")
    assert saved["epoch"] < 3 and saved["world_size"] == 2 and len(saved["rng"]["ranks"]) == 2
    assert saved["batch_in_epoch"] > 0, "stopped at an epoch's end: the mid-epoch train meter goes untested"
    stopped = tmp_path / "stopped_last.pth"
    stopped.write_bytes((run_dir / "checkpoints" / "last.pth").read_bytes())
    # the same command again on two ranks: bit for bit the uninterrupted two-rank run
    again = torchrun(*cfg, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    two = load(run_dir / "checkpoints" / "final_model.pth")
    assert_resumed(again.stdout, run_dir / "checkpoints" / "last.pth", saved["global_step"], two,
                   epoch=saved["epoch"], batch=saved["batch_in_epoch"], own=True)
    assert_same_state(two, ref)
    # every row of metrics.csv, the stopped epoch's too: its train loss and metric counts were those of both ranks
    assert_same_rows(training_rows(run_dir), training_rows(tmp_path / "reference"))
    # resumed on one process from the stopped state: it completes the same global batches, none twice
    one = tmp_path / "one"
    # (at a small LR: one process's batch statistics and gradient sums differ from two ranks' in the last bits, so
    # no run equals it; its weights show they went on from the stopped ones, assert_continued_from)
    single = run_cli(*cfg, "resume=full", f"resume.checkpoint={stopped}", "scheduler=none", "optimizer.lr=1e-5",
                     f"hydra.run.dir={one}", cwd=tmp_path)
    final = load(one / "checkpoints" / "final_model.pth")
    assert_resumed(single.stdout, stopped, saved["global_step"], final)
    assert_continued_from(final, saved, lr=1e-5)  # the weights and Adam state, not only the position
    assert final["global_step"] == ref["global_step"] == 3 * 400 // 8
    assert [r["epoch"] for r in read_rows(one / "metrics.csv")] == ["1", "2", "3"]


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    """metrics.csv rows: the same epochs and columns, the numbers equal up to float rounding."""
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected] and got and got[0].keys() == expected[0].keys()
    for a, b in zip(got, expected):
        for key in a:
            try:
                x, y = float(a[key]), float(b[key])
            except ValueError:
                assert a[key] == b[key], (a["epoch"], key, a[key], b[key])
                continue
            assert abs(x - y) <= 1e-6 * max(1.0, abs(y)), (a["epoch"], key, a[key], b[key])


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """trainer.on_nonfinite=skip under DDP (issue 26): the averaged gradients carry one rank's NaN to every rank, so
    the ranks drop a step together when any rank's loss is not finite. Rank 1 alone sees a NaN at optimizer step 3:
    both ranks end with the same weights, bit for bit those of the run where both saw it (the batch skipped
    everywhere)."""
    finals = {}
    for name, nan_ranks in (("one_rank", "[1]"), ("every_rank", "[0,1]")):
        weights = tmp_path / f"{name}_weights"
        weights.mkdir()
        proc = torchrun(*SAME_MATH, "model._target_=tiny_nets.NaNOnRanks", f"+model.nan_ranks={nan_ranks}",
                        "+model.nan_call=3", f"+model.weights_dir={weights}", "trainer.on_nonfinite=skip",
                        f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        # each rank skipped once, rank 0 (its log file) in the one_rank run on rank 1's flag: its own loss was finite
        out, log_file = proc.stdout + proc.stderr, (tmp_path / name / "training.log").read_text()
        assert out.count("update skipped") == 2 and log_file.count("update skipped") == 1, out[-5000:]
        assert "Non-finite loss at optimizer step 3: update skipped (1 so far" in log_file, log_file[-5000:]
        final = load(tmp_path / name / "checkpoints" / "final_model.pth")
        for rank in (0, 1):  # the weights each rank ended with: replicas still
            assert_same(torch.load(weights / f"rank{rank}.pth", weights_only=True), final["model_state_dict"],
                        f"{name}: rank {rank}'s weights")
        assert all(v.isfinite().all() for v in final["model_state_dict"].values()), name
        assert final["global_step"] == 2 * 48 // 8
        finals[name] = final
    assert_same_state(finals["one_rank"], finals["every_rank"])


def test_a_batch_that_does_not_split_is_a_clear_error(tmp_path):
    proc = torchrun(*TINY, "trainer.batch_size=7", cwd=tmp_path, check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "trainer.batch_size=7 does not divide by the 2 processes" in out, out[-3000:]


def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    run_dir = tmp_path / "run"
    tic = time.time()
    proc = torchrun(*SAME_MATH, "model._target_=tiny_nets.FailsOnRank1", "trainer.dist_timeout_s=30",
                    f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and time.time() - tic < 120, out[-3000:]
    assert "rank 1 failed: RuntimeError: rank 1 broke on purpose" in out, out[-3000:]
    assert "rank 1 broke on purpose" in (run_dir / "rank_1.log").read_text()


def test_local_gpus_runs_each_job_as_two_processes(tmp_path):
    """hydra/launcher=local_gpus with procs_per_job=2 on the CPU (gpus_per_job on GPUs): each job of the sweep is
    started by torch's elastic launch API as two gloo ranks, one run dir each, the same result as one process."""
    sweep = tmp_path / "sweep"
    run_cli("-m", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]", "hydra.launcher.n_jobs=1",
            "hydra.launcher.procs_per_job=2", "+model.width=6,8", *SAME_MATH, f"hydra.sweep.dir={sweep}",
            cwd=tmp_path, env_extra=ENV)
    for job, width in (("0", 6), ("1", 8)):
        ckpt = load(sweep / job / "checkpoints" / "final_model.pth")
        assert ckpt["world_size"] == 2 and ckpt["model_state_dict"]["body.0.weight"].shape[0] == width
        assert [r["epoch"] for r in read_rows(sweep / job / "metrics.csv")] == ["1", "2"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    run_cli(*SAME_MATH, "+model.width=6", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env_extra=ENV)
    one, two = (load(d / "checkpoints" / "final_model.pth") for d in (tmp_path / "one", sweep / "0"))
    assert max((two["model_state_dict"][k] - v).abs().max().item() for k, v in one["model_state_dict"].items()) < 1e-4
