"""Search beyond grids and the sweep at a glance (issue 10, parts 4 and 5): a real Optuna search through
hydra-optuna-sweeper, with the basic launcher and with local_gpus (a failed trial is told to Optuna and the
search goes on), and compare's heatmap and grid for a 2 x 2 sweep, checked against the runs' checkpoints."""
import csv
import shutil
import textwrap

import optuna
import yaml

from conftest import TINY, load, run_cli
from project.commands import compare
from test_tools import assert_png

# TINY without the values searched or swept here: a plain key=value on the command line fixes a searched value
BASE = [o for o in TINY if not o.startswith(("model.dropout=", "trainer.max_epochs="))]
ONE_EPOCH = [*BASE, "trainer.max_epochs=1"]


def best_score(job_dir) -> float:
    return load(job_dir / "checkpoints" / "final_model.pth")["best_f_score"]


def test_optuna_search_of_two_trials(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run_cli("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *ONE_EPOCH, f"hydra.sweep.dir={sweep}",
            cwd=tmp_path)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for n in (0, 1):
        config = load(sweep / str(n) / "checkpoints" / "final_model.pth")["config"]
        dropout, wd = config["model"]["dropout"], config["optimizer"]["weight_decay"]
        assert 0 <= dropout <= 0.5 and 1e-5 <= wd <= 1e-2  # the preset's search space reached the runs
        trials[n] = (best_score(sweep / str(n)), dropout, wd)
    # two different scores, or maximising and minimising would pick the same trial
    assert trials[0][0] != trials[1][0] and trials[0][1:] != trials[1][1:], trials
    best = max(trials, key=lambda n: trials[n][0])
    # Optuna maximised what run.py returned: the best val F-score of each trial
    assert result["best_value"] == trials[best][0]
    assert result["best_params"] == {"model.dropout": trials[best][1], "optimizer.weight_decay": trials[best][2]}

    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if "(best trial)" in line]
    assert len(row) == 1 and row[0].split("|")[2].strip() == str(best), out
    assert f"Optuna search (maximize, 2 trials, 0 failed): best trial #{best}" in out
    assert_png(sweep / "trials.png", min_size=(800, 300))


def test_optuna_search_of_two_trials_through_local_gpus(tmp_path):
    """The preset as users type it, two trials at once on the CPU slots of local_gpus."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hparams_search=optuna", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[]",
                   "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=2", *ONE_EPOCH, f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert "Launching 2 jobs locally, 2 at a time" in proc.stdout + proc.stderr
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [best_score(sweep / n) for n in ("0", "1")]
    assert scores[0] != scores[1], scores  # else maximise and minimise agree
    assert result["best_value"] == max(scores)


def test_optuna_through_local_gpus_goes_on_after_a_failed_trial(tmp_path, capsys):
    """max_epochs 1 or 0 (an invalid value: that trial fails before training), two trials at once on the CPU slots
    of local_gpus, the study in SQLite. The seeded random sampler draws 0 then 1 for the first batch: one trial
    FAIL, one COMPLETE, and the search goes on with a second batch. (Not the grid sampler: hydra-optuna-sweeper
    1.3.0 raises when a grid that is used up gets a failed trial told last.)"""
    conf = tmp_path / "myconf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "optuna_fail.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /hydra/sweeper: optuna
          - override /hydra/sweeper/sampler: random
        hydra:
          sweeper:
            sampler: {seed: 0}
            direction: maximize
            n_jobs: 2
            max_failure_rate: 1.0
            params: {trainer.max_epochs: "choice(1, 0)"}
        """))
    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    proc = run_cli("-m", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "hparams_search=optuna_fail",
                   "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=3",
                   f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=s", *BASE,
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "Launching 2 jobs locally, 2 at a time" in proc.stdout + proc.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    trials = [(t.params["trainer.max_epochs"], t.state) for t in study.trials]
    assert trials[:2] == [(0, optuna.trial.TrialState.FAIL), (1, optuna.trial.TrialState.COMPLETE)]
    assert len(trials) == 3  # the search went on after the batch with the failed trial
    failed = sum(state == optuna.trial.TrialState.FAIL for _, state in trials)
    assert study.best_value == best_score(sweep / "1")

    assert compare.main([str(sweep)]) == 0
    assert f"(maximize, 3 trials, {failed} failed): best trial #" in capsys.readouterr().out


def grid_cells(path) -> dict:
    with open(path) as f:
        rows = list(csv.reader(f))
    return {(y, x): value for y, *values in rows[1:] for x, value in zip(rows[0][1:], values)}


def test_a_two_by_two_sweep_as_a_heatmap_and_a_grid(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run_cli("-m", "model.dropout=0.1,0.3", "optimizer.weight_decay=1e-4,1e-2", *BASE, "trainer.max_epochs=2",
            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    expected = {}
    for job in sweep.iterdir():
        if job.is_dir():
            ckpt = load(job / "checkpoints" / "final_model.pth")
            key = (str(ckpt["config"]["model"]["dropout"]), str(ckpt["config"]["optimizer"]["weight_decay"]))
            expected[key] = f"{ckpt['best_f_score']:.4f}"
    assert compare.main([str(sweep)]) == 0
    cells = grid_cells(sweep / "grid.csv")
    assert cells == expected and set(expected) == {(d, w) for d in ("0.1", "0.3") for w in ("0.0001", "0.01")}
    assert len(set(expected.values())) == 4, expected  # four different scores: a transposed grid cannot match
    md = (sweep / "comparison.md").read_text()
    assert "model.dropout down, optimizer.weight_decay across" in md and all(v in md for v in expected.values())
    assert_png(sweep / "heatmap.png", min_size=(500, 300))

    # a job that failed (no metrics) and one that never ran are cells of their own, not gaps
    (sweep / "3" / "metrics.csv").rename(sweep / "3" / "metrics.csv.bak")
    job2 = yaml.safe_load((sweep / "2" / ".hydra" / "overrides.yaml").read_text())
    job3 = yaml.safe_load((sweep / "3" / ".hydra" / "overrides.yaml").read_text())
    shutil.rmtree(sweep / "2")
    assert compare.main([str(sweep), "--out", str(tmp_path / "again")]) == 0
    cells = grid_cells(tmp_path / "again" / "grid.csv")
    value = lambda overrides, key: next(o.split("=")[1] for o in overrides if o.startswith(key))
    assert cells[(value(job3, "model.dropout"), value(job3, "optimizer.weight_decay"))] == "failed"
    assert cells[(value(job2, "model.dropout"), value(job2, "optimizer.weight_decay"))] == "missing"
    assert_png(tmp_path / "again" / "heatmap.png", min_size=(500, 300))
