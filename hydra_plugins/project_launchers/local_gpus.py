"""hydra/launcher=local_gpus: a sweep on one machine, one job per GPU at a time, each job in a fresh process.

Hydra's joblib launcher reuses worker processes (CUDA, allocator and wandb state leak from job to job) and
submitit_local gives every job GPU 0. Here every job is a new *spawned* interpreter whose CUDA_VISIBLE_DEVICES
names its own GPU from a pool; the next job starts as soon as a GPU frees up. Without GPUs, `n_jobs` jobs run at
once on the CPU. A failing job (an exception, sys.exit, a crash) does not stop the others; at the end the sweep
lists every failed job (overrides, run dir, how to rerun it) and exits with 1; under a search sweeper (Optuna)
a failed job is a failed trial and the search goes on.

The per-job setup mirrors Hydra's own launchers (basic, joblib, submitit): the parent composes each job's config
with load_sweep_config and sets hydra.job.id / hydra.job.num; the child restores Hydra's singletons and resolvers
and calls hydra.core.utils.run_job, so the sweep dir (multirun.yaml, <n>/.hydra/, job logging) is Hydra's.
As with any "spawn" multiprocessing, the app's script is imported (not run) by each job's process: it must call
main() under `if __name__ == "__main__":`, as run.py does.
"""
import copy
import logging
import multiprocessing
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, List, Optional, Sequence

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class LocalGpusLauncherConf:
    _target_: str = "hydra_plugins.project_launchers.local_gpus.LocalGpusLauncher"
    # GPU ids (or UUIDs) to hand out, one per running job; null = every GPU this process can see
    # (CUDA_VISIBLE_DEVICES if set, else nvidia-smi). An empty list means "CPU only".
    gpus: Optional[List[Any]] = None
    # jobs that may share one GPU at the same time
    jobs_per_gpu: int = 1
    # jobs at once when there is no GPU (they run with CUDA_VISIBLE_DEVICES="")
    n_jobs: int = 2
    # GPUs per job: each job runs as that many torch.distributed processes (DDP), one per GPU
    gpus_per_job: int = 1
    # without GPUs: torch.distributed processes per job (gloo), e.g. to test the several-process path on a CPU
    procs_per_job: int = 1


# Registered here (not as a yaml in an app's conf/) so that any Hydra app with this package installed gets
# hydra/launcher=local_gpus; Hydra imports every module under hydra_plugins/ when it discovers plugins.
ConfigStore.instance().store(group="hydra/launcher", name="local_gpus", node=LocalGpusLauncherConf,
                             provider="project")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without importing torch (no CUDA context in the sweep process)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # "GPU 0: NVIDIA H100 (UUID: ...)"; MIG devices are indented lines below their GPU and are not counted
    return re.findall(r"^GPU (\d+):", out, flags=re.MULTILINE)


class JobFailed(CompactHydraException):
    """The return value of a failed job. Hydra's basic sweeper raises it when it reads the job's result, so the
    sweep exits with 1 and a one-line message (the summary is logged just before), after every job has ended. A
    search sweeper (Optuna) catches it as any Exception, records the trial as failed and goes on."""


def _run_in_child(conn, payload: bytes, procs: int = 1) -> None:
    """Entry point of a job's process: run the job (itself, or as `procs` torch.distributed processes), send back
    its JobReturn."""
    ret = _run_hydra_job(payload) if procs == 1 else _run_ranks(payload, procs)
    if ret.status == JobStatus.FAILED:  # send the reason, not the exception object (it may not pickle)
        ret._return_value = f"{type(ret._return_value).__name__}: {ret._return_value}"
    try:
        data = cloudpickle.dumps(ret)
    except Exception as e:  # a return value that cannot travel: keep the job's success, say what was lost
        log.warning("Job %s: its return value cannot be sent to the sweep (%s); sending its repr instead",
                    ret.hydra_cfg.hydra.job.num, e)
        ret._return_value = repr(ret._return_value)
        data = cloudpickle.dumps(ret)
    conn.send_bytes(data)
    conn.close()


def _run_ranks(payload: bytes, procs: int) -> JobReturn:
    """A job of several processes, started by torch's own elastic launch API (what torchrun uses): each rank runs
    the Hydra job with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set; rank 0's JobReturn is the job's. A rank
    that fails ends the job (torch stops the others) and the job exits without a result."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    try:
        results = elastic_launch(config, _run_rank)(payload)
    except Exception as e:  # torch's ChildFailedError names the failing rank and its exit code
        sys.exit(f"a rank of this job failed: {' '.join(str(e).split())[:500]}")
    return cloudpickle.loads(results[0])


def _run_rank(payload: bytes) -> bytes:
    ret = _run_hydra_job(payload)
    if ret.status == JobStatus.FAILED:
        raise RuntimeError(f"{type(ret._return_value).__name__}: {ret._return_value}")
    return cloudpickle.dumps(ret)


def _run_hydra_job(payload: bytes) -> JobReturn:
    """Restore Hydra's global state of the sweep process and run the job in this process."""
    from hydra.core.plugins import Plugins

    # Hydra's plugin scan re-executes every hydra_plugins module, redefining their config dataclasses; scan
    # once *before* unpickling the job's config so that the config and the modules agree on those classes.
    plugins = Plugins.instance()
    hydra_context, task_function, config, singleton_state = cloudpickle.loads(payload)
    singleton_state["instances"][Plugins] = plugins  # set_state would otherwise scan (and redefine) again
    Singleton.set_state(singleton_state)  # ConfigStore, JobRuntime, OmegaConf resolvers of the sweep process
    setup_globals()  # ${now:}, ${hydra:} resolvers (hydra.sweep.dir is multirun/${now:...} by default)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


@dataclass
class _Job:
    idx: int
    overrides: List[str]
    config: DictConfig
    run_dir: Path
    slot: str  # its CUDA_VISIBLE_DEVICES value
    process: Any = None
    receiver: Any = None  # read end of the pipe the JobReturn comes through
    result: Optional[JobReturn] = None


class LocalGpusLauncher(Launcher):
    def __init__(self, gpus=None, jobs_per_gpu: int = 1, n_jobs: int = 2, gpus_per_job: int = 1,
                 procs_per_job: int = 1) -> None:
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.jobs_per_gpu, self.n_jobs = int(jobs_per_gpu), int(n_jobs)
        self.gpus_per_job, self.procs_per_job = int(gpus_per_job), int(procs_per_job)
        if min(self.jobs_per_gpu, self.n_jobs, self.gpus_per_job, self.procs_per_job) < 1:
            raise ValueError(f"hydra.launcher.jobs_per_gpu ({jobs_per_gpu}), n_jobs ({n_jobs}), gpus_per_job "
                             f"({gpus_per_job}) and procs_per_job ({procs_per_job}) must be >= 1")
        self.config = self.hydra_context = self.task_function = None
        self.running: dict[Any, _Job] = {}  # process sentinel -> job, while launch() runs
        self.stop_signal = None  # set by SIGTERM/SIGINT to the sweep process
        self.threads_per_job = 1
        self.procs_per_run = 1

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def slots(self) -> list[str]:
        """One CUDA_VISIBLE_DEVICES value per job that may run at once."""
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        if gpus:
            k = self.gpus_per_job  # a job of k GPUs gets k of them: "0,1", "2,3"; GPUs left over stay idle
            groups = [",".join(gpus[i:i + k]) for i in range(0, len(gpus) - k + 1, k)]
            if not groups:
                raise ValueError(f"hydra.launcher.gpus_per_job={k} but only {len(gpus)} GPU(s) are visible: {gpus}")
            return [g for _ in range(self.jobs_per_gpu) for g in groups]  # 0,1,0,1: spread before sharing
        return [""] * self.n_jobs  # CPU jobs: "" hides every GPU from them

    def take_slot(self, free: list[str]) -> str:
        """A free slot on the GPU that runs the fewest jobs now (with jobs_per_gpu > 1, spread before sharing)."""
        busy = [job.slot for job in self.running.values()]
        slot = min(free, key=busy.count)
        free.remove(slot)
        return slot

    def job(self, idx: int, overrides: Sequence[str], slot: str) -> _Job:
        """The job's own config, as Hydra's basic launcher makes it (hydra.job.id and num = its index)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        sweep = config.hydra.sweep  # resolved like run_job does: sweep.dir / sweep.subdir
        run_dir = (Path(str(sweep.dir)) / str(sweep.subdir)).absolute()
        return _Job(idx, list(overrides), config, run_dir, slot)

    def start(self, job: _Job, ctx) -> None:
        receiver, sender = ctx.Pipe(duplex=False)
        # cloudpickle: the task function is @hydra.main's function in __main__, which plain pickle cannot name
        payload = cloudpickle.dumps((self.hydra_context, self.task_function, job.config, Singleton.get_state()))
        job.process = ctx.Process(target=_run_in_child, args=(sender, payload, self.procs_per_run),
                                  name=f"hydra-job-{job.idx}")
        # inherited by the child before it imports torch: its GPU, and its share of the cores (jobs that each spin
        # OpenMP threads on every core slow each other down several times over)
        env = {"CUDA_VISIBLE_DEVICES": job.slot, "OMP_NUM_THREADS": str(self.threads_per_job)}
        previous = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            job.process.start()
        finally:
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
        sender.close()  # only the child holds the write end now: its exit means EOF here
        job.receiver = receiver
        log.info("\t#%d : %s -> %s, %s", job.idx, " ".join(filter_overrides(job.overrides)),
                 f"GPU {job.slot}" if job.slot else "CPU", job.run_dir)

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGTERM/SIGINT to the sweep: start no new job; SIGTERM is passed on to the running jobs, which save
        last.pth and exit (Ctrl-C already reaches them: they share the terminal's process group)."""
        if signum == signal.SIGINT and self.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting (the jobs got it too and stop at once)
        self.stop_signal = signum
        if signum != signal.SIGINT:
            for job in list(self.running.values()):
                if job.process.is_alive():
                    os.kill(job.process.pid, signum)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        free = self.slots()
        self.threads_per_job = max(1, len(os.sched_getaffinity(0)) // len(free))
        # torch.distributed processes per job: one per GPU of its slot, or procs_per_job on the CPU
        self.procs_per_run = self.gpus_per_job if any(free) else self.procs_per_job
        log.info("Launching %d jobs locally, %d at a time, %s, %d CPU threads each%s", len(job_overrides),
                 len(free), f"on GPUs {sorted(set(free))}" if any(free) else "on the CPU", self.threads_per_job,
                 f", {self.procs_per_run} processes per job (DDP)" if self.procs_per_run > 1 else "")
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per job: nothing leaks between jobs
        pending = list(enumerate(job_overrides, start=initial_job_idx))
        self.running, self.stop_signal = {}, None
        done: list[_Job] = []
        handlers = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.running or (pending and not self.stop_signal):
                while pending and free and not self.stop_signal:
                    idx, overrides = pending.pop(0)
                    job = self.job(idx, overrides, self.take_slot(free))
                    self.start(job, ctx)
                    self.running[job.process.sentinel] = job
                    if self.stop_signal == signal.SIGTERM:  # arrived while this job was being started
                        os.kill(job.process.pid, signal.SIGTERM)
                if not self.running:
                    continue
                # Read results as they come (a big JobReturn would otherwise fill the pipe and block the child
                # at exit); a slot is freed only when its process has exited (and released its GPU).
                listening = {job.receiver: job for job in self.running.values() if not job.receiver.closed}
                for ready in wait([*listening, *self.running]):
                    if ready in listening:
                        self._receive(listening[ready])
                    elif ready in self.running:
                        job = self.running.pop(ready)
                        self._receive(job)  # sent just before exiting, or EOF
                        job.process.join()
                        free.append(job.slot)
                        done.append(job)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        results = [self._result(job) for job in sorted(done, key=lambda j: j.idx)]
        self._report(done, [idx for idx, _ in pending], results)
        return results

    @staticmethod
    def _receive(job: _Job) -> None:
        if job.receiver.closed:  # already read when its exit was noticed in the same wait()
            return
        try:
            job.result = cloudpickle.loads(job.receiver.recv_bytes())
        except EOFError:  # the process ended without a result: sys.exit, a signal, out of memory
            pass
        job.receiver.close()

    @staticmethod
    def _result(job: _Job) -> JobReturn:
        if job.result is not None:
            return job.result
        code = job.process.exitcode
        why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        task_cfg = copy.deepcopy(job.config)
        with open_dict(task_cfg):
            del task_cfg["hydra"]  # as run_job sets ret.cfg
        return JobReturn(overrides=job.overrides, cfg=task_cfg, hydra_cfg=job.config, status=JobStatus.FAILED,
                         _return_value=f"its process {why} without a result", working_dir=str(job.run_dir))

    def _report(self, done: list[_Job], not_started: list[int], results: list[JobReturn]) -> None:
        """Log the failed jobs with how to rerun each; make the sweep exit with 1 if any failed or never ran."""
        failed = [(job, r) for job, r in zip(sorted(done, key=lambda j: j.idx), results)
                  if r.status == JobStatus.FAILED]
        if not failed and self.stop_signal is None:
            return
        program = shlex.quote(sys.argv[0])
        lines = []
        for job, r in failed:
            # a job stopped by a signal saved last.pth (run.py raises Interrupted): its rerun continues it
            kind = "interrupted" if str(r._return_value).startswith("Interrupted") else "failed"
            lines += [f"  #{job.idx} {' '.join(filter_overrides(job.overrides))}: {kind}: {r._return_value}",
                      f"      run dir: {job.run_dir}",
                      f"      rerun:   python {program} hydra.run.dir={shlex.quote(str(job.run_dir))} "
                      + " ".join(shlex.quote(o) for o in job.overrides)]
        summary = []
        if self.stop_signal is not None:
            sweep_dir = shlex.quote(str(Path(str(self.config.hydra.sweep.dir)).absolute()))
            summary.append(f"Sweep stopped by {signal.Signals(self.stop_signal).name}: the running jobs were asked to "
                           f"save their last.pth and stop; jobs not started: {not_started or 'none'}. Finish it with: "
                           f"project-sweep continue {sweep_dir} (every job continues where it stopped).")
        if failed:
            stopped = sum("interrupted: " in line for line in lines)
            summary.append(f"{len(failed)} of {len(done)} jobs failed" + (f" ({stopped} interrupted)" if stopped else "")
                           + ":\n" + "\n".join(lines))
        summary = "\n".join(summary)
        log.error("%s", summary)
        for job, r in failed:  # what a sweeper raises (basic) or records as a failed trial (Optuna) when it reads it
            r._return_value = JobFailed(f"Sweep failed: job #{job.idx} failed ({r._return_value}); "
                                        f"{len(failed)} of {len(done)} jobs failed (details above)")
        if not failed:  # every started job finished, but the sweep is incomplete
            raise JobFailed(f"Sweep stopped by {signal.Signals(self.stop_signal).name} (details above)")
