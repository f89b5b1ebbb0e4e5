"""A chaos soak, by hand (issue 11, part 5): train a small config while a driver SIGKILLs it at random moments,
half of them aimed at checkpoint writes (the moment its temp file appears), restart it in the same run dir each
time, and at the end compare the final weights with an uninterrupted run.

    python benchmarks/chaos.py --kills 100                 # a few minutes per 30 kills on 2 cores (start-up ~6 s)
    python benchmarks/chaos.py --kills 20 --disk-full /mnt/small    # a small file system you mounted (tmpfs)

Counts: kills (and how many landed inside a write), restarts that continued from a checkpoint, checkpoint
files that did not load after a kill (target 0), epochs repeated (work redone after a kill), and whether the
final weights, optimizer, scheduler and RNG equal the uninterrupted run's bit for bit. With --disk-full the
driver instead fills the run dir's file system at random moments: the run must stop with exit code 4, no temp
file left, every checkpoint loadable; the driver frees the space and continues the run.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from project.checkpoints.files import state_difference  # the tests' bit-for-bit comparison (needs no pytest)

ROOT = Path(__file__).resolve().parents[1]

CFG = ["data.train_size=128", "data.val_size=16", "data.image_size=32", "trainer.batch_size=8",
       "trainer.num_threads=1", "logger=csv", "model=microsegformer", "model.embed_dims=[8,16,32]",
       "model.num_heads=[1,1,2]", "model.decoder_dim=16", "model.dropout=0.1"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def starts(run_dir: Path) -> int:
    log = run_dir / "training.log"
    return log.read_text().count("Run dir ") if log.exists() else 0


def writing(run_dir: Path, pid: int) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.endswith(f".{pid}.tmp") for p in ckpts.iterdir())


def wait_training(proc, run_dir: Path, before: int) -> bool:
    while starts(run_dir) <= before:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return True


def check_files(run_dir: Path) -> int:
    """Checkpoint files that do not load (target 0)."""
    bad = 0
    for path in (run_dir / "checkpoints").glob("*.pth"):
        try:
            torch.load(path)
        except Exception:  # noqa: BLE001 - any failure to load is what this counts
            bad += 1
    return bad


def soak(args, run_dir: Path, cmd: list[str]) -> dict:
    rng, counts = random.Random(args.seed), {"kills": 0, "in_write": 0, "unloadable": 0, "fills": 0, "exit_4": 0,
                                             "tmp_left": 0}
    while counts["kills"] + counts["fills"] < args.kills:
        before = starts(run_dir)
        proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_training(proc, run_dir, before):
            break  # finished
        aim = args.disk_full is None and rng.random() < 0.5
        deadline = time.time() + (10 if aim else rng.uniform(0.0, 1.0))
        while time.time() < deadline and proc.poll() is None and not (aim and writing(run_dir, proc.pid)):
            time.sleep(0.001)
        if proc.poll() is not None:
            break
        if args.disk_full is None:
            counts["in_write"] += writing(run_dir, proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            counts["kills"] += 1
        else:
            fill(Path(args.disk_full) / "filler")
            _, err = proc.communicate(timeout=600)
            counts["fills"] += 1
            counts["exit_4"] += proc.returncode == 4
            counts["tmp_left"] += len(list((run_dir / "checkpoints").glob("*.tmp")))
            (Path(args.disk_full) / "filler").unlink(missing_ok=True)
        counts["unloadable"] += check_files(run_dir)
        print(f"\r{counts}", end="", flush=True)
    print()
    return counts


def fill(path: Path) -> None:
    """Take every free byte of path's file system (a full file system may refuse even the open: then it is full)."""
    try:
        with open(path, "ab") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=0, help="default: enough for the kills (1.5 per kill)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--disk-full", help="a small file system (e.g. a tmpfs) for the run dir; fill it instead of killing")
    args = parser.parse_args()
    epochs = args.epochs or int(args.kills * 1.5) + 5
    cfg = [*CFG, f"trainer.max_epochs={epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tic = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run.py"), *cfg, f"hydra.run.dir={work / 'reference'}"],
                       cwd=work, env=ENV, check=True, capture_output=True)
        reference_s = time.perf_counter() - tic
        run_dir = (Path(args.disk_full) if args.disk_full else work) / "chaos"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, str(ROOT / "run.py"), *cfg, f"hydra.run.dir={run_dir}"]
        tic = time.perf_counter()
        counts = soak(args, run_dir, cmd)
        done = subprocess.run(cmd, cwd=work, env=ENV, capture_output=True, text=True)
        soak_s = time.perf_counter() - tic
        assert done.returncode == 0, done.stderr[-2000:]
        log = (run_dir / "training.log").read_text()
        ref = torch.load(work / "reference" / "checkpoints" / "final_model.pth")
        got = torch.load(run_dir / "checkpoints" / "final_model.pth")
        found = state_difference(got, ref)
        equal = "yes" if found is None else f"NO: {found[:200]}"
        trained = [int(line.split("epoch ")[1].split("/")[0]) for line in log.splitlines() if "  train  lr " in line]
        counts.update(restarts=log.count("Resuming (full) from this run's own"), epochs=epochs,
                      epochs_repeated=len(trained) - len(set(trained)), bit_equal=equal,
                      reference_s=round(reference_s, 1), soak_s=round(soak_s, 1))
    print("\n".join(f"{k:16s} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
