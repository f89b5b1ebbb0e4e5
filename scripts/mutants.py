"""Named mutants, run by the project on itself (issue 26): each mutant breaks one promise of the core on purpose,
and the tests that claim that promise must fail against it.

    python scripts/mutants.py                       # every mutant (about 24 minutes on a 2-core CPU VM)
    python scripts/mutants.py --only restore-nothing
    python scripts/mutants.py --list                # each mutant, what it breaks and the tests it runs

A mutant is the exact replacement of one snippet in one file of project/, applied to a temporary copy of the tree
(the files git knows, edits included); its tests run there, with this Python, importing `project` from the copy
(PYTHONPATH, which tests/conftest.py also hands to every `python run.py` it starts). The snippet must be found
exactly once: a refactor that moved it fails loudly instead of turning the mutant into a no-op, and
tests/test_mutants.py checks every snippet against today's tree in CI.

First a baseline: the union of the chosen mutants' tests must pass on an unmutated copy, or a "kill" would mean
nothing. Then each mutant in turn (one at a time: tests start real training processes), every test on its list
run to the end (no -x), each test's outcome read from pytest's JUnit XML report. Killed means EVERY test on the
list failed: each of them claims the promise the mutant breaks, so a test that passes against it is a survivor
(named in the table), and the mutant survived. A mutated file that does not compile or import, a collection
error, a test that errors in setup, is skipped or does not run at all are errors of the script, not kills.

Exit code: 0 every mutant killed, 1 one survived, 2 an error (a snippet not found once, a failing baseline, ...).
Adding a piece of training state (docs/architecture.md) means adding its mutant here.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1800  # seconds for one pytest call; a tiny run takes seconds, a whole mutant a few minutes


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    file: str                # under the repository root
    old: str                 # the exact snippet, found once in `file`
    new: str
    tests: tuple[str, ...]   # pytest node ids: each claims the promise the mutant breaks, so each must fail


class MutantError(Exception):
    """The script could not judge a mutant (a snippet not found once, a broken patch, pytest not running tests)."""


# --- the mutants --------------------------------------------------------------------------------------------------

RESTORE = "project/recipe/restore.py"
LOADED = "fresh = load_state_dicts(run.state, saved, plan.restores)"  # what resume=full loads, in recipe.restore

# tests that resume=full and compare with a run never stopped (assert_resumed + assert_same_state)
LATEST = "tests/test_resume.py::test_latest_picks_the_newest_run"
PLATEAU = "tests/test_untested_paths.py::test_plateau_and_sgd_resume_bit_for_bit"
SCALER = "tests/test_gpu_features.py::test_16_mixed_skips_overflowing_steps_and_resumes_the_scaler"
WINDOW = "tests/test_gpu_features.py::test_sigterm_inside_an_accumulation_window_resumes_bit_exact"  # EMA, meter
WANDB = "tests/test_wandb.py::test_preempted_run_restarted_in_its_dir_keeps_its_wandb_run"
RUN_LOADER = "tests/test_workers.py::test_run_loader_sends_keys_keeps_order_and_workers_and_ignores_stop_signals"
MID_EPOCH = "tests/test_resume.py::test_full_resume_after_sigterm_mid_epoch_is_bit_exact"
SIGKILLS = "tests/test_kill_resume.py::test_sigkill_at_random_moments_and_inside_writes_then_matches_uninterrupted"
CORRUPT = "tests/test_kill_resume.py::test_a_corrupt_last_checkpoint_is_reported_and_the_previous_one_used"
# the tests issue 26 found passing against a restore that loads nothing (a deterministic retrain from scratch)
RESTORE_NOTHING = (
    "tests/test_resume.py::test_full_resume_applies_a_changed_lr",
    "tests/test_gpu_switches.py::test_channels_last_trains_within_float_tolerance_and_saves_the_standard_layout",
    "tests/test_swin_phases.py::test_resume_continues_the_right_phase_bit_exact[1]",
    LATEST,
    "tests/test_scores.py::test_resume_full_with_another_metric_restarts_the_best",
    SIGKILLS,
    CORRUPT,
)
# the tests issue 26 found checking a resume by its position only (counters restored, weights dropped would pass)
WEIGHTS_DROPPED = (
    LATEST,
    "tests/test_gpu_features.py::test_compiled_checkpoints_resume_in_eager_mode_and_back",
    "tests/test_atomic_save.py::test_sigkill_during_save_never_breaks_a_checkpoint",
    "tests/test_sweeps.py::test_ctrl_c_stops_a_sweep_each_job_saves_and_one_continues",
    "tests/test_distributed.py::test_two_ranks_stopped_by_sigterm_resume_bit_exact_and_on_one_rank",
)
# the end-to-end stop and resume through 2 DataLoader workers on PNG folder data (the group gets the signal)
WORKERS_RESUME = "tests/test_workers.py::test_signal_to_the_process_group_stops_mid_epoch_and_resumes_bit_exact[SIGTERM]"
OWN_CODE = "tests/test_own_code.py::test_their_classes_as_they_are_train_and_continue_from_their_own_best_model"


def not_restored(entry: str, description: str, *tests: str) -> Mutant:
    """resume=full leaves one entry of the training state (project/state.py) as built: saved, never loaded."""
    return Mutant(f"{entry.replace('_', '-')}-not-restored", description, RESTORE, LOADED,
                  f'fresh = load_state_dicts(run.state, saved, plan.restores - {{"{entry}"}})', tests)


MUTANTS = [
    Mutant("restore-nothing", "resume=full loads no entry of the state: every resume silently starts from scratch",
           RESTORE, LOADED, "fresh = load_state_dicts(run.state, saved, set())", RESTORE_NOTHING),
    not_restored("model", "the weights are not restored", *WEIGHTS_DROPPED),
    not_restored("optimizer", "the optimizer state (Adam's moments and step counts) is not restored", LATEST),
    not_restored("scheduler", "the LR scheduler's state (the plateau's best and bad epochs) is not restored", PLATEAU),
    not_restored("scaler", "the 16-mixed grad scaler (scale, growth tracker) is not restored", SCALER),
    not_restored("ema", "the EMA copy of the weights is not restored", WINDOW),
    not_restored("progress", "the position (epoch, step, batch), best scores and early stopping are not restored",
                 LATEST),
    not_restored("train_meter", "a mid-epoch stop's running train statistics (loss, grad norm) are not restored",
                 WINDOW),
    not_restored("tracker", "the tracker's state (the W&B run id) is not restored: a requeue starts a new W&B run",
                 WANDB),
    not_restored("rng", "the RNG states (dropout masks) are not restored", LATEST),
    Mutant("loader-from-batch-0", "the run's loader starts every resumed epoch at its first batch",
           "project/data/loader.py", "order = self.sampler.set_epoch(epoch, start)",
           "order = self.sampler.set_epoch(epoch, 0)",
           (RUN_LOADER, MID_EPOCH, WORKERS_RESUME)),
    Mutant("augment-ignores-epoch", "each sample's augmentation seed ignores the epoch: every epoch draws the same",
           "project/data/augment.py", 'f"{seed}/{epoch}/{index}"', 'f"{seed}/0/{index}"',
           ("tests/test_folder_data.py::test_augmented_samples_are_the_same_in_any_process_and_differ_between_epochs",
            "tests/test_untested_paths.py::test_preview_epoch_shows_that_epochs_augmentation")),
    Mutant("workers-take-stop-signals", "DataLoader workers die of SIGINT/SIGTERM sent to the job's process group",
           "project/data/loader.py", "signal.signal(s, signal.SIG_IGN)", "signal.signal(s, signal.SIG_DFL)",
           (RUN_LOADER, WORKERS_RESUME)),
    Mutant("direct-write", "the atomic write writes the target itself (no temp file, no rename)",
           "project/atomic.py", "    discard(tmp)\n    try:\n        yield tmp\n",
           "    discard(tmp)\n    tmp = path\n    try:\n        yield tmp\n",
           ("tests/test_atomic_write.py::test_a_write_leaves_the_old_file_or_the_new_one_and_no_temp_file",)),
    Mutant("best-not-restored", "the stored best score and epoch are dropped at a resume (best_model.pth restarts)",
           "project/state.py", "        for key, value in d.items():\n",
           "        d.update(best_score=None, best_epoch=0, best_per_class={})\n        for key, value in d.items():\n",
           ("tests/test_untested_paths.py::test_a_resume_keeps_the_stored_best_until_a_validation_beats_it",)),
    Mutant("early-stopping-reset", "the early-stopping counter restarts at 0 at a resume",
           "project/state.py", 'bad_epochs=es.get("bad_epochs", 0)', "bad_epochs=0",
           ("tests/test_untested_paths.py::test_early_stop_after_a_resume_at_the_uninterrupted_epoch",)),
    Mutant("matching-weights-not-loaded", "resume=reset_optimizer matches the weights but loads none of them: the "
           "continuation starts from fresh weights", "project/resume.py",
           'model.load_state_dict({k: weights[k] for k in report["matched"]}, strict=False)',
           "model.load_state_dict({}, strict=False)", (OWN_CODE,)),
]


# --- applying a mutant --------------------------------------------------------------------------------------------

def mutated(text: str, mutant: Mutant) -> str:
    """`text` with the mutant's snippet replaced; an error unless the snippet is there exactly once."""
    count = text.count(mutant.old)
    if count != 1:
        raise MutantError(f"{mutant.name}: the snippet {mutant.old!r} is in {mutant.file} {count} times, not once: "
                          "update the mutant to today's code in scripts/mutants.py")
    return text.replace(mutant.old, mutant.new)


def copy_tree(dest: Path) -> None:
    """The files git knows in this tree (tracked and new, not ignored; edits included) copied into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():  # a tracked file deleted in the work tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def environment(tree: Path) -> dict:
    # the copy first on the path: ahead of the editable install, which points at this work tree
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}


def check_imports_from(tree: Path, module: str) -> None:
    """`module` compiles and imports from the copy, not from this work tree: otherwise a "kill" could be a syntax
    error, or the tests would run the unmutated code."""
    code = f"import {module} as m, project; print(m.__file__); print(project.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=environment(tree), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise MutantError(f"{module} does not import in the copy:\n{proc.stderr.strip()}")
    for path in proc.stdout.split():
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise MutantError(f"{module} was imported from {path}, not from the copy {tree}")


def module_of(file: str) -> str:
    return file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


# --- running the tests --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int         # pytest's exit code
    results: dict     # node id -> "passed", "failed", "error" (setup or teardown), "skipped"; absent: not run
    why: dict         # node id -> the first line of its failure (the failed assertion), so the table says what broke
    seconds: dict     # node id -> seconds the test took
    total: float      # seconds of the whole pytest call
    output: str

    def listed(self, tests, result: str) -> list:
        return [t for t in tests if self.results.get(t) == result]


def node_id(case: ET.Element) -> str:
    """pytest's node id of a JUnit <testcase> (xunit1: its file, and the classes after the module, if any)."""
    file, classname = case.get("file", ""), case.get("classname", "")
    module = file.removesuffix(".py").replace("/", ".")
    classes = classname[len(module) + 1:].split(".") if classname.startswith(module + ".") else []
    return "::".join([file, *classes, case.get("name", "")])


def read_report(path: Path) -> tuple[dict, dict, dict]:
    """Each test's outcome, its failure's first line and its seconds, from pytest's JUnit XML report."""
    results, why, seconds = {}, {}, {}
    for case in ET.parse(path).getroot().iter("testcase"):
        node = node_id(case)
        failure, error, skipped = (case.find(tag) for tag in ("failure", "error", "skipped"))
        # an error beside a failure (a teardown after the failed assertion) keeps the failure: the test failed
        result = ("failed" if failure is not None else "error" if error is not None
                  else "skipped" if skipped is not None else "passed")
        results[node] = result
        cause = next((e for e in (failure, error, skipped) if e is not None), None)
        if cause is not None:
            why[node] = first_line(cause.get("message") or cause.text or "")
        seconds[node] = seconds.get(node, 0.0) + float(case.get("time") or 0)
    return results, why, seconds


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_tests(tree: Path, tests) -> Outcome:
    """pytest on `tests` in the copy, every test to its end (no -x); no plugins that reorder tests or cache."""
    report = tree / ".mutants-report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
           f"--basetemp={tree / '.pytest-tmp'}", f"--junitxml={report}", "-o", "junit_family=xunit1", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=environment(tree), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise MutantError(f"pytest ran over {TIMEOUT} s: {' '.join(tests)}") from e
    output = proc.stdout + proc.stderr
    if not report.exists():
        raise MutantError(f"pytest exited {proc.returncode} without a report; its output ends:\n{output[-3000:]}")
    return Outcome(proc.returncode, *read_report(report), time.monotonic() - start, output)


def check_ran(what: str, tests, outcome: Outcome) -> None:
    """Every listed test ran and either passed or failed: anything else is no verdict on the mutant."""
    unclear = {t: outcome.results.get(t, "not run") for t in tests
               if outcome.results.get(t) not in ("passed", "failed")}
    if unclear or outcome.code not in (0, 1):
        raise MutantError(f"{what}: pytest exited {outcome.code}; tests neither passed nor failed: "
                          f"{unclear or 'none'}; its output ends:\n{outcome.output[-3000:]}")


def judge(mutant: Mutant, outcome: Outcome) -> str:
    """"killed" (every test on the list failed), "survived" (one passed); anything else is an error."""
    check_ran(mutant.name, mutant.tests, outcome)
    return "survived" if outcome.listed(mutant.tests, "passed") else "killed"


def baseline(mutants) -> float:
    """Every test the mutants run passes on an unmutated copy (so that a failure against a mutant is its doing)."""
    tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="mutants-baseline-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        check_imports_from(tree, "project.recipe.restore")
        outcome = run_tests(tree, tests)
    check_ran("the baseline (no mutant)", tests, outcome)
    failed = outcome.listed(tests, "failed")
    if failed:
        raise MutantError(f"the baseline (no mutant) fails: {failed}; its output ends:\n{outcome.output[-3000:]}")
    return outcome.total


def run_mutant(mutant: Mutant) -> tuple[str, Outcome]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        target = tree / mutant.file
        target.write_text(mutated(target.read_text(), mutant))
        check_imports_from(tree, module_of(mutant.file))
        outcome = run_tests(tree, mutant.tests)
    return judge(mutant, outcome), outcome


# --- the command line ---------------------------------------------------------------------------------------------

def short(node: str) -> str:
    return node.removeprefix("tests/")


def print_list(mutants) -> None:
    for m in mutants:
        print(f"{m.name}  ({m.file}): {m.description}")
        for test in m.tests:
            print(f"    {short(test)}")


def print_table(rows) -> None:
    """Markdown, as docs/mutants.md keeps it: one row per test of each mutant; `what failed` is the failed
    assertion's first line, cut short; seconds are the test's own (the mutant's row: the whole pytest call)."""
    print("| mutant | result | test | what failed | seconds |")
    print("|---|---|---|---|---|")
    for name, result, outcome, tests in rows:
        print(f"| **{name}** | **{result}** | {len(tests)} test(s) | | {outcome.total:.0f} |")
        for test in tests:
            if outcome.results.get(test) == "passed":
                what = f"survived: test {short(test)} passed"
            else:
                why = outcome.why.get(test, "")
                why = why if len(why) <= 90 else why[:87] + "..."
                what = f"`{why}`".replace("|", "\\|") if why else "-"
            print(f"| | {outcome.results.get(test, 'not run')} | `{short(test)}` | {what} | "
                  f"{outcome.seconds.get(test, 0):.0f} |")


def select(only: str | None) -> list[Mutant]:
    if not only:
        return MUTANTS
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in {m.name for m in MUTANTS}]
    if unknown:
        raise MutantError(f"no mutant named {', '.join(unknown)}; --list shows them")
    return [m for m in MUTANTS if m.name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run each named mutant of the core against the tests that claim "
                                                 "its property; every mutant must be killed.")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--only", metavar="NAME[,NAME...]", help="run only these mutants")
    args = parser.parse_args(argv)
    try:
        mutants = select(args.only)
        if args.list:
            print_list(mutants)
            return 0
        for m in mutants:  # every snippet is checked before anything long runs
            mutated((ROOT / m.file).read_text(), m)
        start = time.monotonic()
        print(f"baseline: {len(mutants)} mutant(s)' tests on the unmutated tree ...", flush=True)
        print(f"baseline passed in {baseline(mutants):.0f} s", flush=True)
        rows = []
        for m in mutants:
            result, outcome = run_mutant(m)
            survivors = outcome.listed(m.tests, "passed")
            print(f"{m.name}: {result} ({outcome.total:.0f} s)"
                  + "".join(f"\n    survived: test {short(t)} passed" for t in survivors), flush=True)
            rows.append((m.name, result, outcome, m.tests))
    except MutantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print_table(rows)
    survived = [name for name, result, *_ in rows if result != "killed"]
    print(f"\n{len(rows) - len(survived)} of {len(rows)} mutants killed in {time.monotonic() - start:.0f} s"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
