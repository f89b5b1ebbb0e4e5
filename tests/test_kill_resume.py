"""Fault tolerance: SIGKILL at random moments, restart in the same run dir each time, same final weights."""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TINY, assert_resumed, assert_same_state, load, start_lines, train_tiny

CFG = [*TINY, "trainer.max_epochs=6", "data.train_size=384"]  # ~1.5 s epochs, each ending with a last.pth write
KILLS = 12


def writing(ckpts: Path, pid: int) -> bool:
    """A checkpoint write of process `pid` is in flight: its temp file exists (checkpoint.save_atomic)."""
    return ckpts.is_dir() and any(p.name.endswith(f".{pid}.tmp") for p in ckpts.iterdir())


def kill_when(proc, run_dir: Path, aim_at_write: bool, rng: random.Random, starts_before: int,
              wait_for_checkpoint: bool = False) -> dict:
    """SIGKILL the run once it trains: either the moment a checkpoint write is seen in flight (its temp file), or
    at a random moment up to 1.5 s after this start announced itself. Returns what was true at the kill."""
    ckpts, log = run_dir / "checkpoints", run_dir / "training.log"
    while not (log.exists() and log.read_text().count("Run dir ") > starts_before):
        if proc.poll() is not None:
            return {}
        time.sleep(0.005)
    # wait_for_checkpoint: once a kill has landed before the run's first checkpoint, the next waits for it (on a
    # loaded machine the first epoch may take longer than any random delay, and the run would never progress)
    first = time.time() + 300
    while wait_for_checkpoint and not (ckpts / "last.pth").exists() and time.time() < first and proc.poll() is None:
        time.sleep(0.005)
    deadline = time.time() + (10 if aim_at_write else rng.uniform(0.0, 1.5))
    while time.time() < deadline and proc.poll() is None:
        if aim_at_write and writing(ckpts, proc.pid):
            break
        time.sleep(0.001)
    in_write = writing(ckpts, proc.pid)
    had_checkpoint = (ckpts / "last.pth").exists()
    if proc.poll() is not None:
        return {}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the newest intact file on disk at the kill, read before the next start: the position that start must show
    on_disk = load(ckpts / "last.pth") if (ckpts / "last.pth").exists() else None
    position = (on_disk["epoch"], on_disk.get("batch_in_epoch", 0)) if on_disk else (0, 0)
    return {"in_write": in_write, "after_checkpoint": had_checkpoint, "position": position}


def test_sigkill_at_random_moments_and_inside_writes_then_matches_uninterrupted(tmp_path):
    """Kills timed by the run's progress (not by wall-clock from launch, which mostly hits the ~6 s import of
    torch): half aimed at checkpoint writes, half at random moments of training. After every kill every checkpoint
    file must load; the restarts must have continued from a checkpoint; the end equals an uninterrupted run."""
    train_tiny(tmp_path / "reference", *CFG[len(TINY):], cwd=tmp_path)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "run.py"), *CFG, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    kills = []
    for i in range(KILLS):
        starts = (run_dir / "training.log").read_text().count("Run dir ") if (run_dir / "training.log").exists() else 0
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill = kill_when(proc, run_dir, aim_at_write=i % 2 == 1, rng=rng, starts_before=starts,
                         wait_for_checkpoint=any(not k["after_checkpoint"] for k in kills))
        if not kill:
            break  # it finished before this kill
        kills.append(kill)
        for path in (run_dir / "checkpoints").glob("*.pth"):
            load(path)  # every published checkpoint loads after every kill
    assert len(kills) >= 8, f"the run finished after only {len(kills)} kills; make it longer"
    assert sum(k["after_checkpoint"] for k in kills) >= len(kills) - 1, kills
    assert sum(k["in_write"] for k in kills) >= 3, f"too few kills landed inside a checkpoint write: {kills}"
    # the same command again: it continues from its newest complete checkpoint (or says it is done)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (run_dir / "training.log").read_text()
    continued = log.count("Resuming (full) from this run's own")
    with_file = sum(k["position"] != (0, 0) for k in kills)
    assert continued >= with_file, f"only {continued} starts continued, {with_file} had a checkpoint to continue"
    # every start logs its position ("Run dir ... | epochs E -> N", printed after the restore) before a kill can
    # land (kill_when waits for it): the first starts from scratch, each start after a kill exactly where the
    # last.pth on disk at that kill was, never at an older file (best_model.pth, an earlier epoch) nor at 0
    begun = start_lines(log)
    expected = [(0, 0)] + [k["position"] for k in kills]
    if expected[-1] == (6, 0):  # killed after the last epoch's save: the next start finds it finished (no start line)
        expected.pop()
    assert begun[:len(expected)] == expected, f"starts at {begun}, the files on disk at the kills: {expected}"
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
    # killed once epoch 3 is saved: its last.pth and checkpoint_epoch_3.pth (a link to it) are torn below, and two
    # intact epochs remain, so continuing from an older one than the newest would show
    while not (run_dir / "checkpoints" / "checkpoint_epoch_3.pth").exists():
        assert first.poll() is None, "the run ended before epoch 3"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    last = run_dir / "checkpoints" / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # torn
    # what it must continue from, read here from the files on disk, not from the program's message: the intact file
    # with the most steps (checkpoint_epoch_N.pth may be a link to the torn file; best_model.pth may hold the same)
    intact = {path: state for path, state in map(loadable, sorted((run_dir / "checkpoints").glob("*.pth"))) if state}
    newest = max(state["global_step"] for state in intact.values())
    candidates = {str(path) for path, state in intact.items() if state["global_step"] == newest}
    expected = next(state for state in intact.values() if state["global_step"] == newest)
    assert expected["epoch"] >= 1 and expected.get("batch_in_epoch", 0) == 0, sorted(intact)
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *cfg], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert "last.pth is unreadable: continuing from" in out and "truncated or corrupt" in out
    ref = load(tmp_path / "reference" / "checkpoints" / "final_model.pth")
    got = load(run_dir / "checkpoints" / "final_model.pth")
    used = re.search(r"last\.pth is unreadable: continuing from (\S+) \(epoch (\d+), step (\d+)\)", out)
    assert used and used[1] in candidates, f"continued from {used and used[1]}, the newest intact: {candidates}"
    assert_resumed(done.stdout, Path(used[1]), newest, got, epoch=expected["epoch"], batch=0, own=True)
    assert_same_state(got, ref)


def loadable(path: Path) -> tuple[Path, dict | None]:
    """(path, its checkpoint) or (path, None) where the file is torn."""
    try:
        return path, load(path)
    except Exception:  # a torn zip: torch raises RuntimeError (or another error, by where it was cut)
        return path, None
