"""Seeds as replicates in compare (issue 19, part 1): runs whose configs differ only in seed, name, tags, resume.*,
logger.*, trainer.device or trainer.num_threads are one configuration, shown as mean +- spread (sample standard
deviation over seeds) and n; ranked by the mean; the top two called within or beyond noise; seed is never a grid
axis. Built from constructed run dirs (checkpoint dicts, metrics.csv, results.json, .hydra/overrides.yaml,
multirun.yaml) whose answers are known: no training."""
import csv
import itertools
import json
import shutil
import statistics

import pytest
import torch
import yaml

from conftest import load
from project import noise
from project.checkpoints.files import FORMAT
from project.commands import compare
from test_tools import assert_png, table

DROPOUTS, DECAYS, SEEDS = ("0.1", "0.25"), ("0.0001", "0.001"), ("1", "2", "3")
# best val f_score of each (dropout, weight decay) configuration, one per seed. The top two (0.25/1e-4 and
# 0.1/1e-3) have means 0.6333 and 0.6100: 0.0233 apart, less than the larger seed spread (0.0252): within noise.
BEST = {("0.1", "0.0001"): (0.50, 0.52, 0.51), ("0.1", "0.001"): (0.62, 0.60, 0.61),
        ("0.25", "0.0001"): (0.61, 0.66, 0.63), ("0.25", "0.001"): (0.40, 0.43, 0.41)}
TEST = 0.05  # the test score of a job: its best val minus this, plus a seed-dependent wobble


def config(dropout, decay, seed, **other) -> dict:
    """A resolved config as checkpoints hold it. The replicate keys vary between seeds on purpose (name,
    trainer.device, trainer.num_threads, logger, resume, tags): they must not split a configuration."""
    n = int(seed)
    return {"seed": n, "name": f"seed{n}", "tags": [f"t{n}"],
            "model": {"_target_": "project.models.UNet", "dropout": float(dropout)},
            "optimizer": {"_target_": "torch.optim.AdamW", "lr": other.get("lr", 0.001), "weight_decay": float(decay)},
            "trainer": {"max_epochs": 6, "device": ("auto", "cpu", "auto")[n % 3], "num_threads": n},
            "logger": {"_target_": ("project.loggers.CSVLogger", "project.loggers.WandbLogger")[n % 2]},
            "resume": {"mode": "none", "checkpoint": None if n != 3 else "latest"}}


def write_run(run_dir, cfg: dict, best: float, test: float | None, overrides: list[str]) -> None:
    """A finished run dir: .hydra/ (config.yaml marks a run dir), metrics.csv (6 epochs, the best at epoch 3),
    final_model.pth, results.json."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    curve = [best - 0.2, best - 0.05, best, best - 0.01, best - 0.02, best - 0.015]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", "train_loss", "val_loss", "val_f_score"])
        for epoch, score in enumerate(curve, 1):
            writer.writerow([epoch, "train", 1.0 / epoch, 1.1 / epoch, score])
    torch.save({"format": FORMAT, "epoch": 6, "global_step": 60, "phase": "train", "model_state_dict": {},
                "optimizer_state_dict": {}, "scheduler_state_dict": {}, "best_epoch": 3, "config": cfg, "rng": {},
                "early_stopping": {"stopped": False}, "lineage": [], "parent_best": None, "monitor": "f_score",
                "best_score": best, "best_f_score": best}, run_dir / "checkpoints" / "final_model.pth")
    if test is not None:
        (run_dir / "results.json").write_text(json.dumps(
            {"split": "test", "checkpoint": "best", "main_metric": "dataset_f1", "metrics": {"dataset_f1": test}}))


@pytest.fixture
def seed_sweep(tmp_path):
    """A 2 x 2 x 3-seed sweep as Hydra lays it out (multirun.yaml with the three lists; jobs 0..11, seed fastest).
    Job 11 failed before its first epoch (no metrics.csv); job 2 has no test score."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = [f"model.dropout={','.join(DROPOUTS)}", f"optimizer.weight_decay={','.join(DECAYS)}",
            f"seed={','.join(SEEDS)}"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for num, (d, w, s) in enumerate(itertools.product(DROPOUTS, DECAYS, SEEDS)):
        job = sweep / str(num)
        overrides = [f"model.dropout={d}", f"optimizer.weight_decay={w}", f"seed={s}"]
        best = BEST[(d, w)][int(s) - 1]
        write_run(job, config(d, w, s), best, None if num == 2 else round(best - TEST + 0.01 * int(s), 4),
                  overrides)
        if num == 11:
            (job / "metrics.csv").unlink()
            (job / "checkpoints" / "final_model.pth").unlink()
    return sweep


def from_checkpoints(sweep) -> dict:
    """{(dropout, weight decay): ([best val of each scored job], [test score of each job with one])}, read from the
    jobs' own files the way a user would check them: the checkpoint's best_f_score, results.json."""
    found = {}
    for job in sweep.iterdir():
        final = job / "checkpoints" / "final_model.pth"
        if not final.exists():
            continue
        ckpt = load(final)
        key = (str(ckpt["config"]["model"]["dropout"]), f"{ckpt['config']['optimizer']['weight_decay']:g}")
        bests, tests = found.setdefault(key, ([], []))
        bests.append(ckpt["best_f_score"])
        if (job / "results.json").exists():
            tests.append(json.loads((job / "results.json").read_text())["metrics"]["dataset_f1"])
    return found


def mean_pm(values) -> str:
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


def test_a_2x2x3_seed_sweep_is_a_2x2_table_and_heatmap_of_means(seed_sweep, capsys):
    assert compare.main([str(seed_sweep)]) == 0
    out = capsys.readouterr().out
    expected = from_checkpoints(seed_sweep)
    assert sorted(len(b) for b, _ in expected.values()) == [2, 3, 3, 3]  # job 11 failed

    # the table: one row per configuration, ranked by the mean, with n and mean +- spread of val and test
    rows = table(out.split("Each run:")[0])
    ranking = sorted(expected, key=lambda k: -statistics.fmean(expected[k][0]))
    assert [(r["model.dropout"], r["optimizer.weight_decay"]) for r in rows] == [(d, f"{float(w):g}") for d, w in ranking]
    assert "seed" not in rows[0] and "trainer.device" not in rows[0] and "name" not in rows[0]
    for row in rows:
        bests, tests = expected[(row["model.dropout"], f"{float(row['optimizer.weight_decay']):g}")]
        assert row["n"] == str(len(bests))
        assert row["best val f_score"] == mean_pm(bests)
        test = mean_pm(tests) + (f" (n={len(tests)})" if len(tests) != len(bests) else "")
        assert row["test dataset_f1"] == test
        assert row["status"] == f"{len(bests)} done"
    assert rows[0]["runs"] == "6, 7, 8" and rows[-1]["runs"] == "9, 10"  # jobs of a configuration, in order
    assert rows[0]["tags"] == "t1,t2,t3" and rows[-1]["tags"] == "t1,t2"  # the labels of its runs

    # the top two: 0.0233 apart with seed spreads 0.0252 and 0.0100: within noise, by the noise rule
    (a, b) = [expected[k][0] for k in ranking[:2]]
    delta = statistics.fmean(a) - statistics.fmean(b)
    assert noise.within_noise(delta, statistics.stdev(a), statistics.stdev(b)) is True
    top = next(line for line in out.splitlines() if line.startswith("Top two: "))
    assert top.startswith(f"Top two: model.dropout=0.25, optimizer.weight_decay=0.0001 {mean_pm(a)} (n=3) and "
                          f"model.dropout=0.1, optimizer.weight_decay=0.001 {mean_pm(b)} (n=3): means differ by "
                          f"{delta:.4f} (within noise: spread {statistics.stdev(a):.4f})"), top

    # every run is still listed, with its seed
    runs = table(out.split("Each run:")[1].split("Best val")[0])
    assert len(runs) == 11 and {r["seed"] for r in runs} == {"1", "2", "3"}

    # the grid: 2 x 2 (seed is not an axis), each cell mean +- spread from the checkpoints, n where fewer
    assert "Best val f_score per grid cell (model.dropout down, optimizer.weight_decay across, mean +- spread over " \
           "3 seeds)" in out
    with open(seed_sweep / "grid.csv") as f:
        grid = list(csv.reader(f))
    assert grid[0] == ["model.dropout \\ optimizer.weight_decay", *DECAYS] and [r[0] for r in grid[1:]] == list(DROPOUTS)
    for row in grid[1:]:
        for w, cell in zip(DECAYS, row[1:]):
            bests = expected[(row[0], f"{float(w):g}")][0]
            assert cell == mean_pm(bests) + (" (n=2)" if len(bests) == 2 else ""), (row[0], w, cell)
    assert_png(seed_sweep / "heatmap.png", min_size=(500, 300))
    assert_png(seed_sweep / "heatmap_test_dataset_f1.png", min_size=(500, 300))
    assert "test dataset_f1 per grid cell (best weights, mean +- spread over 3 seeds)" in out

    # configurations.csv: the same ranking as numbers
    with open(seed_sweep / "configurations.csv") as f:
        configs = list(csv.DictReader(f))
    for c, key in zip(configs, ranking):
        bests = expected[key][0]
        assert float(c["best val f_score mean"]) == pytest.approx(statistics.fmean(bests), abs=1e-12)
        assert float(c["best val f_score spread"]) == pytest.approx(statistics.stdev(bests), abs=1e-12)
        assert int(c["n"]) == len(bests)
    assert_png(seed_sweep / "comparison.png")


def test_runs_passed_to_compare_group_by_config_and_a_clear_lead_is_beyond_noise(tmp_path, capsys):
    """Six run dirs named on the command line: two configurations of three seeds (0.70/0.71/0.72 against
    0.60/0.61/0.62: 0.1 apart, spreads 0.01) and one run with another lr, which is a configuration of its own."""
    dirs = []
    for i, (dropout, scores) in enumerate((("0.1", (0.70, 0.71, 0.72)), ("0.2", (0.60, 0.61, 0.62)))):
        for seed, best in zip(SEEDS, scores):
            dirs.append(tmp_path / f"run_{dropout}_{seed}")
            write_run(dirs[-1], config(dropout, "0.0001", seed), best, None, [])
    dirs.append(tmp_path / "other_lr")
    write_run(dirs[-1], config("0.1", "0.0001", "1", lr=0.01), 0.9, None, [])
    assert compare.main([*map(str, dirs), "--out", str(tmp_path / "cmp"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    configs = result["configurations"]
    assert [(c["values"], c["n"]) for c in configs] == [
        ({"model.dropout": 0.1, "optimizer.lr": 0.01}, 1), ({"model.dropout": 0.1, "optimizer.lr": 0.001}, 3),
        ({"model.dropout": 0.2, "optimizer.lr": 0.001}, 3)]
    assert configs[0]["spread"] is None and configs[1]["seeds"] == [1, 2, 3]
    assert configs[1]["mean"] == pytest.approx(0.71) and configs[1]["spread"] == pytest.approx(0.01)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    table_rows = table(md.split("Each run:")[0])
    assert table_rows[0]["best val f_score"] == "0.9000" and table_rows[0]["n"] == "1"
    assert table_rows[1]["best val f_score"] == "0.7100 +- 0.0100"
    # the lone run (no spread) against a configuration of spread 0.01: 0.19 apart, beyond noise
    assert "means differ by 0.1900 (beyond noise: spread 0.0100)" in md

    # without the lone run: the top two are the seed groups, 0.1 apart with spreads of 0.01
    assert compare.main([*map(str, dirs[:-1]), "--out", str(tmp_path / "cmp2")]) == 0
    top = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Top two: "))
    assert top.endswith("means differ by 0.1000 (beyond noise: spread 0.0100); a configuration's spread is the "
                        "sample standard deviation of its best score over seeds.")


def test_a_single_seed_sweep_looks_as_before(seed_sweep, capsys):
    """Seed 1's jobs alone (multirun.yaml without the seed list): one row per run, no spreads, no
    configurations.csv, the grid of plain best scores."""
    task = [f"model.dropout={','.join(DROPOUTS)}", f"optimizer.weight_decay={','.join(DECAYS)}"]
    (seed_sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for job in list(seed_sweep.iterdir()):
        if job.is_dir() and int(job.name) % 3:
            shutil.rmtree(job)
    assert compare.main([str(seed_sweep)]) == 0
    out = capsys.readouterr().out
    assert "+-" not in out.split("Top two")[0] and "Each run" not in out
    assert not (seed_sweep / "configurations.csv").exists()
    rows = table(out.split("Best val")[0])
    assert [r["run"] for r in rows] == ["3", "6", "0", "9"] and rows[0]["best val f_score"] == "0.6200"
    assert "(model.dropout down, optimizer.weight_decay across):" in out
    with open(seed_sweep / "grid.csv") as f:
        assert list(csv.reader(f))[1:] == [["0.1", "0.5000", "0.6200"], ["0.25", "0.6100", "0.4000"]]
