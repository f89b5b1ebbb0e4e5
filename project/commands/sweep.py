"""project-sweep continue SWEEP_DIR [--launcher basic|local_gpus|slurm] [OVERRIDE ...]: finish a stopped sweep.

    project-sweep continue multirun/2026-11-24/10-00-00                          # the same sweep, the same launcher
    project-sweep continue multirun/2026-11-24/10-00-00 --launcher slurm hydra.launcher.partition=gpu
    project-sweep continue multirun/2026-11-24/10-00-00 model.dropout=0.1,0.2,0.3   # the grid extended: new jobs

Reads the sweep's multirun.yaml (its overrides and launcher), checks the sweep dir before anything runs, then
launches the same sweep (python run.py -m ...) into the same dir. Each job is matched to its existing job dir by
its overrides, not by its number, so a grid extended by new values keeps every old job in its own dir and adds the
new ones under new numbers. In its dir a finished job returns "already finished" at once, an interrupted one
continues bit for bit from its own checkpoints/last.pth (run.py does that for a job dir holding one), and a job
that never started starts fresh: a half-made dir with no checkpoint (a training.log, a metrics.csv row written
before a kill) is cleared first.

What may be typed after SWEEP_DIR: the sweep's own overrides (no change), a swept list extended with new values
(its old values kept), and hydra.launcher.* settings (how the jobs run, not what they compute). Any other
override is refused, with the difference named, before anything is written. --launcher runs the jobs with another
launcher (its recorded hydra.launcher.* settings then no longer apply). Grids of Hydra's basic sweeper only: an
Optuna search (hparams_search=optuna) draws its trials from its study and is refused. --dry-run prints the plan.

How a job finds its dir: the launch sets hydra.sweep.subdir to look up hydra.job.env_set.PROJECT_SWEEP_JOB_<n>
(one entry per job), so the mapping travels in every job's own config: to the basic launcher's process, to
local_gpus' spawned jobs and to SLURM nodes alike. The launch uses the run.py that started the sweep (each job
records it in .hydra/launch.yaml), so an installed package (pip install .) needs none beside it; the plan says which.
"""
import argparse
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from project.checkpoints import trust
from project.rundirs import lock as rundir
from project.errors import UserError
from project.commands.overrides import identity_of, job_identity, key_of, parse, parser, show, values_of
from project.commands.text import fail

JOB_DIR_KEY = "PROJECT_SWEEP_JOB_"
SUBDIR = '${oc.select:"hydra.job.env_set.' + JOB_DIR_KEY + '${hydra.job.num}"}'
DEFAULT_SUBDIR = "${hydra.job.num}"
LAUNCHERS = ("basic", "local_gpus", "slurm")
SLURM_LAUNCHERS = ("slurm", "submitit_slurm")
# run.py where the package is used from its repository (an editable install); pip install . has none there
REPO_RUN_PY = Path(__file__).resolve().parents[2] / "run.py"


@dataclass
class Job:
    index: int                      # hydra.job.num in the launch
    overrides: list[str]
    identity: frozenset
    dir_name: str = ""              # its subdir of the sweep dir
    state: str = "new"              # finished | interrupted | half-made | new
    clear: list[str] = field(default_factory=list)  # what a half-made dir held


@dataclass
class SweepContinuation:
    sweep_dir: Path
    jobs: list[Job]
    command: list[str]
    cwd: Path
    launcher: str
    debris: list[Path]              # job dirs without records or checkpoints (a job killed while starting)
    extended: dict                  # {key: [values added]}
    swept: set                      # the keys whose value differs between jobs
    run_py_source: str = ""         # which run.py the command launches, and why that one (find_run_py)


def read_sweep(sweep_dir: Path) -> dict:
    """multirun.yaml: the task overrides, the hydra overrides, the sweeper, the launcher choice, the run's cwd."""
    if not sweep_dir.is_dir():
        raise UserError(f"{str(sweep_dir)!r} does not exist. Pass the sweep dir (multirun/<date>/<time>, the folder "
                        "that holds multirun.yaml and the job dirs 0, 1, ...).")
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        hint = (" It looks like a job dir of a sweep: pass its parent." if (sweep_dir / ".hydra").is_dir()
                or (sweep_dir / "metrics.csv").is_file() else "")
        raise UserError(f"{str(sweep_dir)!r} has no multirun.yaml, so it is not a sweep dir (python run.py -m writes "
                        f"one when the sweep starts).{hint} Pass the folder that holds multirun.yaml; a single run "
                        "continues with python run.py resume=full resume.checkpoint=<run dir>.")
    try:
        hydra = (yaml.safe_load(path.read_text()) or {})["hydra"]
        overrides = hydra["overrides"]
        return {"task": list(overrides.get("task") or []), "hydra": list(overrides.get("hydra") or []),
                "sweeper": hydra.get("sweeper") or {}, "subdir": str((hydra.get("sweep") or {}).get("subdir")),
                "launcher": ((hydra.get("runtime") or {}).get("choices") or {}).get("hydra/launcher") or "basic",
                "cwd": (hydra.get("runtime") or {}).get("cwd")}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{str(path)!r} is not a multirun.yaml Hydra wrote ({type(e).__name__}: {e}): it has no "
                        "hydra.overrides. Restore it from the sweep's first start, or rerun the sweep.") from None


def check_sweeper(sweep_dir: Path, sweeper: dict) -> None:
    target = str(sweeper.get("_target_", ""))
    if "optuna" in target.lower():
        raise UserError(
            f"{sweep_dir} is an Optuna search (hparams_search=optuna): Optuna searches are out of scope for "
            "project-sweep continue, which finishes grids of Hydra's basic sweeper (a search draws its next trials "
            "from its study, so there is no list of jobs to match with the job dirs). Continue a stopped trial with python run.py hydra.run.dir=<trial dir> <its "
            "overrides> (it continues from its last.pth), or run the search again with hydra.sweeper.storage="
            "sqlite:///study.db so that its study survives the sweep process.")
    if target and not target.endswith("BasicSweeper"):
        raise UserError(f"{sweep_dir} was made by the sweeper {target}; project-sweep continue finishes grids of "
                        "Hydra's basic sweeper only. Continue its jobs one by one: python run.py hydra.run.dir=<job "
                        "dir> <its overrides>.")


def hydra_overrides_to_keep(recorded: list[str], subdir: str, launcher: str | None) -> list[str]:
    """The sweep's hydra overrides for the launch: without hydra.sweep.dir (set again), hydra.mode (-m) and this
    tool's own job-dir lookup; with --launcher, without the recorded launcher and its settings."""
    keep = []
    for text in recorded:
        key = text.split("=", 1)[0].lstrip("+~")
        if key in ("hydra.sweep.dir", "hydra.mode") or key.startswith(f"hydra.job.env_set.{JOB_DIR_KEY}"):
            continue
        if key == "hydra.sweep.subdir":
            continue  # checked with the recorded value (check_subdir)
        if launcher and (key == "hydra/launcher" or key.startswith("hydra.launcher.")):
            continue
        keep.append(text)
    return keep


def check_subdir(sweep_dir: Path, subdir: str) -> None:
    if subdir not in (DEFAULT_SUBDIR, SUBDIR, "None"):
        raise UserError(f"{sweep_dir} names its job dirs with hydra.sweep.subdir={subdir}; project-sweep continue "
                        f"places jobs in the sweep's numbered dirs (hydra.sweep.subdir={DEFAULT_SUBDIR}, the "
                        "default). Continue its jobs one by one: python run.py hydra.run.dir=<job dir> <its overrides>.")


def apply_typed(sweep_dir: Path, task: list[str], typed: list[str]) -> tuple[list[str], list[str], dict]:
    """(the task overrides with the typed extensions, the typed hydra.launcher.* overrides, {key: added values}).
    Refuses any typed override that would change what an existing job computes."""
    by_key = {}
    for i, text in enumerate(task):
        by_key[key_of(parse(text))] = i
    task, launcher, extended = list(task), [], {}
    for text in typed:
        if text.startswith(("-m", "--")):
            raise UserError(f"{text!r}: project-sweep continue always runs the sweep as a multirun; type only "
                            "overrides (key=value) after SWEEP_DIR.")
        o = parse(text)
        key = key_of(o)
        if key.startswith("hydra.launcher."):
            launcher.append(text)
            continue
        if key == "hydra/launcher":
            raise UserError(f"{text}: choose the launcher with --launcher {o.value()} (its hydra.launcher.* settings "
                            "may follow as overrides).")
        if key.startswith(("hydra.", "hydra/")):
            raise UserError(f"{text} changes Hydra's settings of the sweep; project-sweep continue keeps them (the "
                            "sweep dir and its layout are the sweep's own). Only hydra.launcher.* (how the jobs run) "
                            "and --launcher may be given.")
        if key not in by_key:
            raise UserError(
                f"{text} is not part of this sweep: its jobs ran without {key} ({sweep_dir}/multirun.yaml: "
                f"{' '.join(task)}), so adding it would change every job. Continue the sweep as it is "
                f"(project-sweep continue {sweep_dir}), or start a new sweep with it.")
        old_text = task[by_key[key]]
        old, new = values_of(parse(old_text)), values_of(o)
        if new == old or set(new) == set(old):
            continue
        dropped = [v for v in old if v not in new]
        if dropped:
            raise UserError(
                f"{text} differs from the sweep's {old_text}: it leaves out {', '.join(dropped)}, which jobs of this "
                f"sweep ran with. project-sweep continue finishes the same sweep and may only add values to a "
                f"swept list; type {old_text} (or nothing), or the list with new values added, e.g. "
                f"{old_text},<new value>.")
        extended[key] = [v for v in new if v not in old]
        task[by_key[key]] = text
    return task, launcher, extended


def expand(params: dict, task: list[str]) -> list[list[str]]:
    """Every job's overrides, in Hydra's basic sweeper's order (the cartesian product, the last list fastest)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + task
    try:
        batches = BasicSweeper.split_arguments(parser().parse_overrides(arguments), None)
    except Exception as e:
        raise UserError(f"The sweep's overrides {arguments} cannot be expanded into jobs "
                        f"({' '.join(str(e).split())}).") from None
    return [job for batch in batches for job in batch]


def job_dirs(sweep_dir: Path) -> list[tuple[Path, list[str] | None]]:
    """(dir, its overrides or None) of every job dir: those with .hydra/overrides.yaml, and numbered dirs without
    (a job that died before run.py wrote its records)."""
    found = []
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        records = d / ".hydra" / "overrides.yaml"
        if records.is_file():
            found.append((d, list(yaml.safe_load(records.read_text()) or [])))
        elif d.name.isdigit():
            found.append((d, None))
    return found


def checkpoints(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "checkpoints").glob("*.pth")) if (d / "checkpoints").is_dir() else []


def state_of(d: Path) -> str:
    names = checkpoints(d)
    if "final_model.pth" in names:
        return "finished"
    if "last.pth" in names:
        return "interrupted"
    if names:
        raise UserError(f"The job dir {d} holds {', '.join(names)} but no checkpoints/last.pth, which a job continues "
                        "from (every epoch writes it). Restore last.pth, or move the dir out of the sweep dir to keep "
                        "its checkpoints and let the job start fresh.")
    return "half-made"


def check_not_running(d: Path) -> None:
    if rundir.is_locked(d):
        raise UserError(f"The job dir {d} is in use by {rundir.holder_summary(rundir.holder(d))}: that job is still "
                        "training, so the sweep is still running (or a job of it was started by hand). Stop it first "
                        "(SIGTERM or Ctrl-C to the sweep saves every running job's last.pth), then continue. "
                        "Nothing was started or changed.")


def check_launcher(launcher: str | None) -> None:
    """--launcher names one this framework sets up."""
    if launcher is not None and launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher} is not a launcher this framework sets up: use {', '.join(LAUNCHERS)} "
                        "(basic: one job after another in one process; local_gpus: a process per job, one per GPU; "
                        "slurm: a SLURM job array).")


def check_sbatch(chosen: str) -> None:
    """A SLURM launcher needs sbatch on this machine."""
    if chosen in SLURM_LAUNCHERS and not shutil.which("sbatch"):
        raise UserError(f"The sweep runs with hydra/launcher={chosen}, but sbatch is not on this machine's PATH. "
                        "Continue it on the cluster's login node, or run the remaining jobs here with "
                        "--launcher local_gpus (or basic).")


def find_run_py(found: list[tuple[Path, list[str] | None]]) -> tuple[Path, str]:
    """(the run.py to launch, where it was found, for the plan): the one that launched the sweep's jobs (their
    .hydra/launch.yaml), else the working directory's, else the repository's this package is imported from (an
    editable install). Installed with pip install ., the package has no run.py beside it."""
    recorded = [r for r in (rundir.launched_by(d) for d, _ in found) if r is not None]
    gone = f" (the recorded {recorded[0]} no longer exists)" if recorded else ""
    for run_py, source in [*((r, "the run.py that launched the sweep") for r in recorded),
                           (Path.cwd() / "run.py", f"the working directory's run.py{gone}"),
                           (REPO_RUN_PY, f"the run.py of the repository project is imported from{gone}")]:
        if run_py.is_file():
            return run_py.resolve(), source
    raise UserError(f"No run.py to launch the sweep with: its job dirs record none{gone}, and there is none in the "
                    f"working directory ({Path.cwd()}). Run project-sweep continue from the repository that "
                    "started the sweep (the folder with run.py and conf/).")


def expand_jobs(sweeper: dict, task: list[str]) -> list[Job]:
    """The sweep's jobs, in launch order; a job listed twice is refused (each job needs its own dir)."""
    jobs = [Job(i, o, job_identity(o)) for i, o in enumerate(expand(sweeper.get("params"), task))]
    twice = {j.identity for j in jobs if sum(k.identity == j.identity for k in jobs) > 1}
    if twice:
        raise UserError(f"The sweep lists the same job more than once ({show(next(iter(twice)))}): a value repeated "
                        "in a list. Each job needs its own dir; list each value once.")
    return jobs


def swept_keys(jobs: list[Job]) -> set:  # the keys whose value differs between jobs
    return {k for j in jobs for k, _ in j.identity if len({v for jj in jobs for kk, v in jj.identity if kk == k}) > 1}


def not_a_job(d: Path, identity: frozenset, jobs: list[Job], task: list[str], sweep_dir: Path) -> UserError:
    """A job dir whose overrides are no job of the sweep: names a value, a key the sweep lacks, a key it lacks."""
    keys = {k for j in jobs for k, _ in j.identity}
    odd = [f"{k}={v}" for k, v in sorted(identity) if all((k, v) not in j.identity for j in jobs)]
    odd += [f"without {k}" for k in sorted(keys - {k for k, _ in identity})]
    what = ", ".join(odd) or show(identity)
    return UserError(
        f"The job dir {d} ran {what}, which is not a job of this sweep ({' '.join(task)}). Move it out of "
        f"the sweep dir, or continue the sweep with that value added to its list (project-sweep continue "
        f"{sweep_dir} key=old,values,new).")


def match_dirs(sweep_dir: Path, found, jobs: list[Job], task: list[str], swept: set) -> tuple[list[Path], set]:
    """Each job dir given to its job by its overrides (job.dir_name, job.state, job.clear): (debris, the names of
    the dirs taken)."""
    by_identity = {j.identity: j for j in jobs}
    debris, used = [], set()
    for d, overrides in found:
        check_not_running(d)
        if overrides is None:
            if checkpoints(d):
                raise UserError(f"The job dir {d} holds checkpoints but no .hydra/overrides.yaml, so which job it "
                                "belongs to is unknown. Move it out of the sweep dir, then continue.")
            debris.append(d)
            continue
        identity = job_identity(overrides)
        job = by_identity.get(identity)
        if job is None:
            raise not_a_job(d, identity, jobs, task, sweep_dir)
        if job.dir_name:
            raise UserError(f"The job dirs {sweep_dir / job.dir_name} and {d} both ran "
                            f"{show(identity, swept) or show(identity)}. Keep one of them in the sweep dir (move the "
                            "other away), then continue.")
        job.dir_name, job.state = d.name, state_of(d)
        if job.state == "half-made":
            job.clear = sorted(p.name for p in d.iterdir())
        used.add(d.name)
    return debris, used


def number_new_jobs(sweep_dir: Path, jobs: list[Job], taken: set) -> None:
    """A job without a dir: its own number when free (as first launched), else the lowest free one."""
    taken = set(taken)
    for job in jobs:
        if job.dir_name:
            continue
        free = (str(n) for n in [job.index, *range(len(taken) + 1)] if str(n) not in taken)
        job.dir_name = next(free)
        taken.add(job.dir_name)
        if (sweep_dir / job.dir_name).is_dir():
            job.clear = sorted(p.name for p in (sweep_dir / job.dir_name).iterdir())


def launch_command(run_py: Path, sweep_dir: Path, recorded: dict, task: list[str], jobs: list[Job],
                   launcher: str | None, launcher_typed: list[str]) -> list[str]:
    """python run.py -m with the sweep's overrides, its dir, each job's dir lookup and the typed launcher settings."""
    hydra = hydra_overrides_to_keep(recorded["hydra"], recorded["subdir"], launcher)
    if launcher:
        hydra.append(f"hydra/launcher={launcher}")
    return [sys.executable, str(run_py), "-m", *task, *hydra, f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweep.subdir='{SUBDIR}'", *(f"+hydra.job.env_set.{JOB_DIR_KEY}{j.index}={j.dir_name}" for j in jobs),
            *launcher_typed]


def plan_continuation(sweep_dir, typed: list[str] = (), launcher: str | None = None,
                      trust_config: bool = False) -> SweepContinuation:
    """Every check, and the launch command; changes nothing on disk."""
    sweep_dir = Path(sweep_dir).absolute()
    check_launcher(launcher)
    recorded = read_sweep(sweep_dir)
    check_sweeper(sweep_dir, recorded["sweeper"])
    check_subdir(sweep_dir, recorded["subdir"])
    chosen = launcher or recorded["launcher"]
    check_sbatch(chosen)
    found = job_dirs(sweep_dir)
    run_py, run_py_source = find_run_py(found)
    task, launcher_typed, extended = apply_typed(sweep_dir, recorded["task"], list(typed))
    trust.check_overrides(recorded["task"] + recorded["hydra"], {identity_of(o) for o in typed},
                          str(sweep_dir / "multirun.yaml"), "--trust-config", "warn" if trust_config else None,
                          identity_of)
    jobs = expand_jobs(recorded["sweeper"], task)
    swept = swept_keys(jobs)
    debris, taken = match_dirs(sweep_dir, found, jobs, task, swept)
    number_new_jobs(sweep_dir, jobs, taken)
    if extended:
        check_composes(run_py.parent / "conf", recorded["hydra"], [j for j in jobs if j.state == "new"])
    command = launch_command(run_py, sweep_dir, recorded, task, jobs, launcher, launcher_typed)
    cwd = Path(recorded["cwd"]) if recorded["cwd"] and Path(recorded["cwd"]).is_dir() else Path.cwd()
    return SweepContinuation(sweep_dir, jobs, command, cwd, chosen, debris, extended, swept, run_py_source)


def check_composes(conf_dir: Path, hydra_overrides: list[str], jobs: list[Job]) -> None:
    """New jobs of an extended grid compose (a config-group value that exists, a value of the right type) before
    Hydra rewrites multirun.yaml with the extended lists."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    searchpath = [o for o in hydra_overrides if o.split("=", 1)[0] == "hydra.searchpath"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="run"):
        for job in jobs:
            try:
                compose(config_name="config", overrides=searchpath + job.overrides)
            except Exception as e:
                raise UserError(f"The new job {' '.join(job.overrides)} cannot be composed "
                                f"({' '.join(str(e).split())}). Fix the value you added; nothing was started and "
                                "multirun.yaml is unchanged.") from None
    GlobalHydra.instance().clear()


def continuation_summary(p: SweepContinuation) -> str:
    counts = {s: sum(j.state == s for j in p.jobs) for s in ("finished", "interrupted", "half-made", "new")}
    names = {"new": "not started"}
    lines = [f"Continuing the sweep {p.sweep_dir} with hydra/launcher={p.launcher}: {len(p.jobs)} jobs ("
             + ", ".join(f"{n} {names.get(s, s)}" for s, n in counts.items() if n) + ")"
             + ("; added to the grid: " + "; ".join(f"{k} {', '.join(v)}" for k, v in p.extended.items())
                if p.extended else "")]
    what = {"finished": "finished: returns \"already finished\"",
            "interrupted": "interrupted: continues from its own checkpoints/last.pth",
            "half-made": "never checkpointed: starts fresh in a cleared dir", "new": "not started: starts fresh"}
    for j in p.jobs:
        cleared = f" (clearing {', '.join(j.clear)})" if j.clear else ""
        values = [o for o in j.overrides if key_of(parse(o)) in p.swept] or j.overrides
        lines.append(f"  #{j.index} -> {j.dir_name}/  {' '.join(values)}: {what[j.state]}{cleared}")
    for d in p.debris:
        if d.name not in {j.dir_name for j in p.jobs}:
            lines.append(f"  {d.name}/ holds no job records and no checkpoint (a job killed while starting): removed")
    shown = [c for c in p.command if not c.startswith(f"+hydra.job.env_set.{JOB_DIR_KEY}")]
    lines.append(f"run.py: {p.command[1]} ({p.run_py_source})")
    lines.append(f"Launching in {p.cwd}: " + " ".join(shlex.quote(c) for c in shown)
                 + f" +hydra.job.env_set.{JOB_DIR_KEY}<n>=<job dir> (one per job)")
    return "\n".join(lines)


def clear(p: SweepContinuation) -> None:
    """Half-made dirs of jobs that start fresh, and job-less debris: removed, so no stale row survives."""
    for j in p.jobs:
        d = p.sweep_dir / j.dir_name
        if j.state in ("half-made", "new") and d.is_dir():
            shutil.rmtree(d)
    for d in p.debris:
        if d.is_dir():
            shutil.rmtree(d)


def continue_sweep(args) -> int:
    p = plan_continuation(args.sweep_dir, args.overrides, args.launcher, args.trust_config)
    print(continuation_summary(p), flush=True)
    if args.dry_run:
        return 0
    clear(p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(p.cwd)
    os.execv(p.command[0], p.command)  # the sweep process itself: its signals, output and exit status are the sweep's


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cont = argparse.ArgumentParser(
        prog="project-sweep continue", description="Finish a stopped sweep in its own dir: finished jobs stay, "
        "interrupted ones continue from their last.pth, the others start.")
    cont.add_argument("sweep_dir", help="the sweep dir (multirun/<date>/<time>, the folder with multirun.yaml)")
    cont.add_argument("overrides", nargs="*", help="the sweep's own overrides, a swept list with values added "
                      "(new jobs), or hydra.launcher.* settings")
    cont.add_argument("--launcher", help=f"run the jobs with another launcher: {', '.join(LAUNCHERS)}")
    cont.add_argument("--dry-run", action="store_true", help="check and print the plan; launch nothing")
    cont.add_argument("--trust-config", action="store_true", help="run the recorded overrides that pick code "
                      "(a _target_) without typing them again (docs/trust.md); the output names them")
    if not argv or argv[0] != "continue":
        top = argparse.ArgumentParser(prog="project-sweep", description=__doc__.split("\n\n")[0])
        top.add_argument("command", choices=["continue"], help="continue SWEEP_DIR: finish a stopped sweep")
        top.parse_args(argv[:1] or [])  # prints the usage and exits 2 (or 0 for --help)
    args = cont.parse_intermixed_args(argv[1:])  # options and overrides in any order
    try:
        return continue_sweep(args)
    except UserError as e:
        return fail(e)


if __name__ == "__main__":
    sys.exit(main())
