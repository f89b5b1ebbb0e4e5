"""One job on 1 and on N processes (issue 12): training images/s and steps/s of the default config, and the cost of
the per-step stop agreement (one all_reduce of one integer).

    python benchmarks/scaling.py [--procs 2] [--epochs 3] [--device cpu]

Throughput is read from the run's training.log (the time between the end of epoch 1 and of the last epoch, so
start-up and the first epoch's warm-up are left out). On the CPU each of N processes gets cores // N threads.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def throughput(cmd: list[str], env: dict, run_dir: Path, train_size: int, batch: int) -> tuple[float, float]:
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=run_dir.parent)
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for m in re.findall(
        r"^\[(\S+ \S+)\]\[project.recipe\]\[INFO\] - epoch \d+/\d+ ", (run_dir / "training.log").read_text(), re.M)]
    seconds = (stamps[-1] - stamps[0]).total_seconds()
    epochs = len(stamps) - 1
    return epochs * train_size / seconds, epochs * (train_size // batch) / seconds


def agreement_cost(procs: int, steps: int = 2000) -> float:
    """Microseconds per stop agreement (all_reduce MAX of one int64, gloo) among `procs` processes."""
    code = f"""
import os, time, torch, torch.distributed as d
d.init_process_group("gloo")
flag = torch.zeros(1, dtype=torch.int64)
for _ in range(100):
    d.all_reduce(flag, op=d.ReduceOp.MAX)
tic = time.perf_counter()
for _ in range({steps}):
    d.all_reduce(flag, op=d.ReduceOp.MAX)
    int(flag.item())
if d.get_rank() == 0:
    print((time.perf_counter() - tic) / {steps} * 1e6)
d.destroy_process_group()
"""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                          "--no-python", sys.executable, "-c", code],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    train_size, batch = 768, 8  # the default config's
    cores = len(os.sched_getaffinity(0))
    base = [f"trainer.max_epochs={args.epochs}", "logger=csv", f"trainer.device={args.device}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, args.procs):
            run_dir = Path(tmp) / f"p{procs}"
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, cores // procs))}
            launcher = [sys.executable] if procs == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
            tic = time.perf_counter()
            img_s, steps_s = throughput([*launcher, str(ROOT / "run.py"), *base, f"hydra.run.dir={run_dir}"], env,
                                        run_dir, train_size, batch)
            rows.append((procs, img_s, steps_s, time.perf_counter() - tic))
    cost = agreement_cost(args.procs)
    print(f"default config (unet, global batch {batch}), {args.epochs} epochs, {cores} cores, {args.device}")
    print("| processes | images/s | steps/s | wall time |\n|---|---|---|---|")
    for procs, img_s, steps_s, wall in rows:
        print(f"| {procs} | {img_s:.0f} | {steps_s:.1f} | {wall:.1f} s |")
    step_us = 1e6 / rows[-1][2]
    print(f"\nstop agreement: {cost:.0f} us per step among {args.procs} processes "
          f"({cost / step_us * 100:.1f} % of a {step_us / 1000:.1f} ms step)")


if __name__ == "__main__":
    main()
