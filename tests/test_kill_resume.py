"""Fault tolerance: SIGKILL at random moments, restart in the same run dir each time, same final weights."""
import os
import random
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY, assert_same_state, load, train_tiny

CFG = [*TINY, "trainer.max_epochs=6", "data.train_size=384"]  # ~1.5 s of training a kill, well past start-up


def test_sigkill_at_20_random_moments_then_matches_uninterrupted(tmp_path):
    train_tiny(tmp_path / "reference", *CFG[len(TINY):], cwd=tmp_path)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "run.py"), *CFG, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))  # start-up, training steps, validation or a checkpoint write
        if proc.poll() is not None:
            break  # it finished before this kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 8, f"the run finished after only {kills} kills; make it longer"
    # the same command again: it continues from its newest complete checkpoint (or says it is done)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    got = load(run_dir / "checkpoints" / "final_model.pth")
    assert got["epoch"] == 6 and got["global_step"] == ref["global_step"]
    assert_same_state(got, ref)  # weights, every optimizer tensor, scheduler, RNG
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"], "a re-done epoch left a duplicate row"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_corrupt_last_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    """A torn last.pth (disk full, a bad copy): the run says so and continues from its newest intact file."""
    run_dir = tmp_path / "run"
    cfg = [*TINY, "trainer.max_epochs=4", "trainer.save_interval=1", "trainer.keep_last=10",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train_tiny(tmp_path / "reference", "trainer.max_epochs=4", cwd=tmp_path)
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *cfg], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run_dir / "checkpoints" / "checkpoint_epoch_2.pth").exists():
        assert first.poll() is None, "the run ended before epoch 2"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    last = run_dir / "checkpoints" / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # torn
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *cfg], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert "last.pth is unreadable: continuing from" in out and "truncated or corrupt" in out
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    got = load(run_dir / "checkpoints" / "final_model.pth")
    assert_same_state(got, ref)
