"""Parallel CPU jobs must not starve each other (issue 11, part 3).

Times, each as a fresh `python run.py` (start-up included), the default config for `--epochs` epochs:
  alone       one job with the cores it may use;
  alone_share one job with the threads each sweep job gets (cores // N): the sweep's lower bound, since a job
              cannot run faster on its share than alone on it;
  sweep       N jobs through `hydra/launcher=local_gpus hydra.launcher.n_jobs=N` (N slots, no GPU): each job gets
              cores // N threads from the launcher;
  unlimited   (--unlimited) N plain `python run.py` started at once, each with torch's default threads: what two
              terminals do, for contrast.
Target: sweep <= 1.2 x alone for N <= cores.

    python benchmarks/parallel_sweep.py [--jobs 2] [--epochs 1] [--rounds 3] [--unlimited]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmds: list[list[str]], cwd: Path, env: dict) -> float:
    tic = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmds[0])} failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unlimited", action="store_true", help="also time N plain runs started at once")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    run = [sys.executable, str(ROOT / "run.py"), f"trainer.max_epochs={args.epochs}", "logger=csv"]
    values = ",".join(str(round(0.1 + 0.01 * i, 2)) for i in range(args.jobs))
    results = {"alone": [], "alone_share": [], "sweep": [], "unlimited": []}
    share = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            results["alone"].append(timed([[*run, f"hydra.run.dir={work}/alone{r}"]], work, env))
            results["alone_share"].append(timed([[*run, f"trainer.num_threads={share}",
                                                  f"hydra.run.dir={work}/share{r}"]], work, env))
            results["sweep"].append(timed([[*run[:2], "-m", *run[2:], "hydra/launcher=local_gpus",
                                            f"hydra.launcher.n_jobs={args.jobs}", "hydra.launcher.gpus=[]",
                                            f"model.dropout={values}", f"hydra.sweep.dir={work}/sweep{r}"]], work, env))
            if args.unlimited:
                results["unlimited"].append(timed([[*run, f"hydra.run.dir={work}/u{r}_{j}"]
                                                   for j in range(args.jobs)], work, env))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items() if v), flush=True)
    alone = statistics.median(results["alone"])
    print(f"\n{args.jobs} jobs of {args.epochs} epoch(s) on {len(os.sched_getaffinity(0))} cores, "
          f"median of {args.rounds}:")
    print("| what | time | vs one job alone |\n|---|---|---|")
    for name, times in results.items():
        if times:
            print(f"| {name} | {statistics.median(times):.1f} s | {statistics.median(times) / alone:.2f} |")


if __name__ == "__main__":
    main()
