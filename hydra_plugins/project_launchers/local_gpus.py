"""hydra/launcher=local_gpus: a sweep on one machine, one job per GPU at a time, each job in a fresh process.

Hydra's joblib launcher reuses worker processes (CUDA, allocator and wandb state leak from job to job) and
submitit_local gives every job GPU 0. Here every job is a new spawned process whose CUDA_VISIBLE_DEVICES names
its own GPU from a pool; the next job starts as soon as a GPU frees up. Without GPUs, `n_jobs` jobs run at once
on the CPU. A failing job does not stop the others; the sweep reports every failed job and then fails.
"""
import logging
import multiprocessing
import os
import subprocess
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import List, Optional, Sequence

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class LocalGpusLauncherConf:
    _target_: str = "hydra_plugins.project_launchers.local_gpus.LocalGpusLauncher"
    gpus: Optional[List[int]] = None  # GPU ids to use; null = all visible
    jobs_per_gpu: int = 1
    n_jobs: int = 2  # parallel jobs when there is no GPU


ConfigStore.instance().store(group="hydra/launcher", name="local_gpus_base", node=LocalGpusLauncherConf,
                             provider="project")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class JobFailed(SystemExit):
    """Raised by Hydra's sweeper when it reads a failed job's result: prints the summary, exits with 1."""


def _run_in_child(conn, payload: bytes) -> None:
    hydra_context, task_function, config = cloudpickle.loads(payload)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status == JobStatus.FAILED:  # send the reason, not the exception object (it may not pickle)
        ret._return_value = f"{type(ret._return_value).__name__}: {ret._return_value}"
    conn.send(ret)


class LocalGpusLauncher(Launcher):
    def __init__(self, gpus=None, jobs_per_gpu: int = 1, n_jobs: int = 2) -> None:
        self.gpus, self.jobs_per_gpu, self.n_jobs = gpus, jobs_per_gpu, n_jobs
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def slots(self) -> list[str]:
        """One CUDA_VISIBLE_DEVICES value per job that may run at once."""
        gpus = [str(g) for g in self.gpus] if self.gpus is not None else visible_gpus()
        if gpus:
            return [g for g in gpus for _ in range(self.jobs_per_gpu)]
        return [""] * self.n_jobs  # CPU jobs: hide any GPU

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        free = self.slots()
        log.info("Launching %d jobs locally, %d at a time, %s", len(job_overrides), len(free),
                 f"on GPUs {sorted(set(free))}" if any(free) else "on the CPU")
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per job: nothing leaks between jobs
        pending, running = list(enumerate(job_overrides, start=initial_job_idx)), {}
        results: dict[int, JobReturn] = {}
        while pending or running:
            while pending and free:
                idx, overrides = pending.pop(0)
                slot = free.pop(0)
                config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(config):
                    config.hydra.job.id = idx
                    config.hydra.job.num = idx
                receiver, sender = ctx.Pipe(duplex=False)
                # cloudpickle: the task function is @hydra.main's inner function, which plain pickle cannot name
                payload = cloudpickle.dumps((self.hydra_context, self.task_function, config))
                process = ctx.Process(target=_run_in_child, args=(sender, payload), name=f"job{idx}")
                previous = os.environ.get("CUDA_VISIBLE_DEVICES")
                os.environ["CUDA_VISIBLE_DEVICES"] = slot  # the child inherits it before it can import torch
                try:
                    process.start()
                finally:
                    if previous is None:
                        os.environ.pop("CUDA_VISIBLE_DEVICES")
                    else:
                        os.environ["CUDA_VISIBLE_DEVICES"] = previous
                sender.close()
                log.info("\t#%d : %s -> %s", idx, " ".join(filter_overrides(overrides)),
                         f"GPU {slot}" if slot else "CPU")
                running[process.sentinel] = (process, idx, slot, receiver, overrides, config)
            for sentinel in wait(list(running)):
                process, idx, slot, receiver, overrides, config = running.pop(sentinel)
                ret = receiver.recv() if receiver.poll() else None
                process.join()
                free.append(slot)
                if ret is None:  # the process died without a result: sys.exit, a signal, out of memory
                    ret = JobReturn(overrides=list(overrides), cfg=config, hydra_cfg=config, status=JobStatus.FAILED,
                                    _return_value=f"exit code {process.exitcode}")
                results[idx] = ret
        failed = {idx: r for idx, r in sorted(results.items()) if r.status == JobStatus.FAILED}
        if failed:
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            lines = [f"  #{idx} {' '.join(filter_overrides(r.overrides))}: {r._return_value} "
                     f"(see {sweep_dir / str(idx)}/training.log)" for idx, r in failed.items()]
            summary = f"{len(failed)} of {len(results)} jobs failed:\n" + "\n".join(lines)
            log.error("%s", summary)
            for r in failed.values():  # the sweeper reads these after we return: exit 1 with the summary
                r._return_value = JobFailed(summary)
        return [results[idx] for idx in sorted(results)]
