"""A process SIGKILLed while it writes a checkpoint leaves every previously written checkpoint loadable."""
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY_DATA, load, run_cli
from project import checkpoint


def kill_during_save(run_dir, cwd, timeout=120) -> bool:
    """Train (or continue) until a save over an existing checkpoint starts, SIGKILL at that instant."""
    cmd = [sys.executable, str(ROOT / "run.py"), *TINY_DATA, "data.train_size=16", "trainer.max_epochs=200",
           "trainer.save_interval=1", "trainer.keep_last=1000", f"hydra.run.dir={run_dir}", "resume=full",
           f"resume.checkpoint={run_dir}"] if (run_dir / "checkpoints" / "last.pth").exists() else \
          [sys.executable, str(ROOT / "run.py"), *TINY_DATA, "data.train_size=16", "trainer.max_epochs=200",
           "trainer.save_interval=1", "trainer.keep_last=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    ckpt_dir, deadline = run_dir / "checkpoints", time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            # wait for a save that would replace an existing last.pth (temp names look like .last.pth.<pid>.tmp)
            if "last.pth" in names and any(n.endswith(f".{proc.pid}.tmp") for n in names):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_during_save_never_breaks_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    hits = 0
    for _ in range(5):
        hits += kill_during_save(run_dir, tmp_path)
        for path in sorted((run_dir / "checkpoints").glob("*.pth")):  # every completed file is whole
            assert load(path)["epoch"] >= 1
            checkpoint.load(path)
    assert hits >= 3, f"only {hits} of 5 kills landed while a checkpoint was being written"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "expected the killed writes to leave temp files behind (they are ignored)"
    # and the run continues from the newest complete checkpoint
    last = load(run_dir / "checkpoints" / "last.pth")
    run_cli(*TINY_DATA, f"hydra.run.dir={tmp_path / 'continued'}", "data.train_size=16",
            f"trainer.max_epochs={last['epoch'] + 1}", "resume=full", f"resume.checkpoint={run_dir}", cwd=tmp_path)
    assert load(tmp_path / "continued" / "checkpoints" / "final_model.pth")["epoch"] == last["epoch"] + 1


def test_a_temp_name_left_by_a_failed_save_never_writes_through_to_a_published_file(tmp_path):
    """A save that failed after linking best_model.pth leaves .last.pth.<pid>.tmp pointing at that file; the next
    save must not truncate it through that name."""
    import os

    import torch

    from project.checkpoint import save_atomic

    save_atomic({"epoch": 1}, [tmp_path / "last.pth", tmp_path / "best_model.pth"])
    stale = tmp_path / f".last.pth.{os.getpid()}.tmp"
    os.link(tmp_path / "best_model.pth", stale)  # as if the process died between the two renames
    save_atomic({"epoch": 2}, [tmp_path / "last.pth"])
    assert torch.load(tmp_path / "best_model.pth") == {"epoch": 1}
    assert torch.load(tmp_path / "last.pth") == {"epoch": 2} and not stale.exists()
