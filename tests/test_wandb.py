"""logger=wandb with the real wandb package in offline mode, read back with W&B's own reader (`wandb leet
inspect`). Nothing here touches the network: W&B's folders are under tmp and no API key is visible."""
import csv
import json
import os
import statistics
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, load, run_cli, stop_with_sigterm
from project.loggers import read_rows

WANDB = Path(sys.executable).parent / "wandb"
TINY_NO_DROPOUT = [o for o in TINY if not o.startswith(("model.dropout=", "logger="))]  # the sweep sets model.dropout


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline, W&B's cache/config/data under tmp, and no key from the environment or ~/.netrc."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("WANDB_")]:
            mp.delenv(key)
        yield {"WANDB_MODE": "offline", "WANDB_DIR": str(home), "WANDB_CACHE_DIR": str(home / "cache"),
               "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_DATA_DIR": str(home / "data"),
               "WANDB_ARTIFACT_DIR": str(home / "artifacts"), "NETRC": str(home / "no_netrc")}


def leet(path: Path, *args) -> str:
    proc = subprocess.run([str(WANDB), "leet", "inspect", *args, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wandb_run(path: Path) -> dict:
    """The offline run at `path` (a run dir's wandb/ folder: its latest run; or one .wandb file) as W&B reads
    it: state, config, summary, step (from --summary), plus group, job_type and the logged steps."""
    info = json.loads(leet(path, "--summary", "--json"))
    records = [json.loads(line) for line in leet(path, "--json").splitlines()]
    run = next(r["run"] for r in records if r["type"] == "run")
    steps = [r["history"]["step"]["num"] for r in records if r["type"] == "history"]
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    versions = [{"name": r["artifact"]["name"], "aliases": r["artifact"].get("aliases", []),
                 "files": sorted(c["path"] for c in r["artifact"]["manifest"]["contents"]),
                 "metadata": json.loads(r["artifact"].get("metadata") or "{}")}
                for r in records if r["type"] == "artifact"]  # every log_artifact call, in order
    return {**info, "group": run.get("run_group"), "job_type": run.get("job_type"), "steps": steps, "rows": rows,
            "versions": versions}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, wandb_env):
    """The issue's 4-job sweep, with the basic launcher (all jobs in one process)."""
    cwd = tmp_path_factory.mktemp("sweep")
    run_cli("-m", "logger=wandb", "model.dropout=0.2,0.25", "optimizer.weight_decay=2e-4,3e-4", *TINY_NO_DROPOUT,
            f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd, env_extra=wandb_env)
    return cwd / "sweep"


def test_wandb_stays_off_the_start_up_path():
    """logger=csv runs must not pay for importing wandb."""
    code = "import sys, project.loggers, project.recipe.train; assert 'wandb' not in sys.modules, 'wandb imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_epochs_without_validation_send_no_empty_values():
    """trainer.eval_interval > 1 writes "" for val metrics; W&B must not get them (a "" makes a series text)."""
    from project.loggers import wandb_row

    row = {"epoch": 3, "phase": "train", "lr": 1e-3, "train_loss": 0.5, "train_f_score": 0.4, "val_loss": "",
           "val_f_score": ""}
    assert wandb_row(row) == {"epoch": 3, "phase": "train", "lr": 1e-3, "train/loss": 0.5, "train/f_score": 0.4}


def test_sweep_gives_one_offline_run_per_job_in_one_group(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    runs = {job.name: wandb_run(job / "wandb") for job in jobs}
    swept = {(r["config"]["model"]["dropout"], r["config"]["optimizer"]["weight_decay"]) for r in runs.values()}
    assert swept == {(0.2, 2e-4), (0.2, 3e-4), (0.25, 2e-4), (0.25, 3e-4)}
    assert {r["group"] for r in runs.values()} == {str(sweep.resolve())}
    assert len({r["run_id"] for r in runs.values()}) == 4
    for job, run in runs.items():
        final = load(sweep / job / "checkpoints" / "final_model.pth")
        assert run["state"] == "finished" and run["exit_code"] == 0
        assert run["job_type"] == "none" and "none" in run["tags"] and "train" in run["tags"]
        assert f"model.dropout={run['config']['model']['dropout']}" in run["name"]
        assert run["steps"] == [1, 2]  # step = epoch
        assert final["logger"] == {"wandb_run_id": run["run_id"]}  # what resume=full continues
        summary = run["summary"]
        assert summary["best_val_f_score"] == final["best_f_score"] and summary["best_epoch"] == final["best_epoch"]
        assert summary["status"] == "done" and summary["val/f_score"] == final["val_f_score"]
        assert (sweep / job / "metrics.csv").read_text().count("\n") == 3  # the CSV record is kept as well
        # per-class scores as val/<metric>/<class name>, the last validation's in the summary (NaN ones left out)
        last = read_rows(sweep / job / "per_class.csv")[-1]
        sent = {k: float(v) for k, v in last.items() if k not in ("epoch", "phase") and v != "nan"}
        assert "f1/background" in sent and "iou/triangle" in last
        assert all(summary[f"val/{k}"] == pytest.approx(v) for k, v in sent.items())


def test_each_epochs_row_holds_its_throughput(sweep):
    """perf_* in metrics.csv is perf/* in W&B's rows (issue 27); the summary holds the run's means."""
    run = wandb_run(sweep / "0" / "wandb")
    csv_rows = read_rows(sweep / "0" / "metrics.csv")
    for row, written in zip(run["rows"], csv_rows, strict=True):
        assert row["perf/images_per_s"] == float(written["perf_images_per_s"]) > 0
        assert row["perf/step_ms"] == float(written["perf_step_ms"]) > 0
        assert row["perf/data_wait"] == float(written["perf_data_wait"]) and 0 <= row["perf/data_wait"] <= 1
    summary = run["summary"]
    assert summary["perf/mean_images_per_s"] == pytest.approx(
        statistics.mean(float(r["perf_images_per_s"]) for r in csv_rows), abs=0.01)
    assert 0 <= summary["perf/mean_data_wait"] <= 1


def test_full_resume_continues_the_same_wandb_run(sweep, wandb_env, tmp_path):
    parent = wandb_run(sweep / "0" / "wandb")
    run_cli(*TINY_NO_DROPOUT, "model.dropout=0.2", "optimizer.weight_decay=2e-4", "logger=wandb", "resume=full",
            f"resume.checkpoint={sweep / '0'}", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'more'}",
            cwd=tmp_path, env_extra=wandb_env)
    run = wandb_run(tmp_path / "more" / "wandb")
    assert run["run_id"] == parent["run_id"]  # one line in W&B after `wandb sync`
    assert run["steps"] == [3] and run["job_type"] == "full"
    assert run["summary"]["best_epoch"] == load(tmp_path / "more" / "checkpoints" / "final_model.pth")["best_epoch"]


@pytest.fixture(scope="module")
def child(sweep, wandb_env, tmp_path_factory):
    """resume=reset_optimizer from sweep job 1, logging its checkpoints, with a tag of the user's."""
    cwd = tmp_path_factory.mktemp("child")
    run_cli(*TINY, "logger=wandb", "logger.log_checkpoints=true", "resume=reset_optimizer",
            f"resume.checkpoint={sweep / '1'}", "trainer.max_epochs=2", "tags=[dropout-test]",
            f"hydra.run.dir={cwd / 'child'}", cwd=cwd, env_extra=wandb_env)
    return cwd / "child"


def test_reset_optimizer_is_a_new_run_that_names_its_parent(sweep, child):
    parent = wandb_run(sweep / "1" / "wandb")
    parent_best = load(sweep / "1" / "checkpoints" / "best_model.pth")
    run = wandb_run(child / "wandb")
    final = load(child / "checkpoints" / "final_model.pth")
    assert run["run_id"] != parent["run_id"] and run["job_type"] == "reset_optimizer"
    assert run["config"]["parent"] == {"checkpoint": str(sweep.resolve() / "1" / "checkpoints" / "best_model.pth"),
                                       "run_id": parent["run_id"], "best_score": parent_best["best_f_score"],
                                       "best_epoch": parent_best["best_epoch"],
                                       "artifact": None}  # the sweep logged no checkpoints: no artifact to name
    # the summary: the monitored metric's best and the parent's, so W&B's runs table sorts by them
    assert run["summary"]["parent_best"] == parent_best["best_f_score"]
    assert run["summary"]["best_val_f_score"] == final["best_f_score"]
    # the gain is measured against the starting weights scored here (the same data and metric)
    assert run["summary"]["start_score"] == final["start_score"]["score"]
    assert run["summary"]["improvement"] == pytest.approx(final["best_f_score"] - final["start_score"]["score"])
    # tags=[...] with the framework's (the phase, the resume mode)
    assert sorted(run["tags"]) == ["dropout-test", "reset_optimizer", "train"]
    assert parent["versions"] == []  # logger.log_checkpoints is off by default


def test_checkpoints_are_artifact_versions_at_each_best_and_the_last_at_the_end(child):
    """logger.log_checkpoints=true: best_model.pth at each new best (the starting weights, scored here, are the
    first), alias best; final_model.pth at the end, alias latest; all versions of model-<run id>."""
    run = wandb_run(child / "wandb")
    final = load(child / "checkpoints" / "final_model.pth")
    with open(child / "metrics.csv", newline="") as f:
        scores = [(int(r["epoch"]), float(r["val_f_score"])) for r in csv.DictReader(f)]
    bests, top = [], None
    for epoch, score in scores:  # the epochs that set a new best, as training decided them
        if top is None or score > top:
            bests.append((epoch, score))
            top = score
    versions = run["versions"]
    assert [v["name"] for v in versions] == [f"model-{run['run_id']}"] * (len(bests) + 1)
    assert [(v["files"], v["metadata"]["epoch"], v["metadata"]["best_score"]) for v in versions[:-1]] == [
        (["best_model.pth"], epoch, score) for epoch, score in bests]
    assert all("best" in v["aliases"] for v in versions[:-1])
    assert versions[-1]["files"] == ["final_model.pth"] and versions[-1]["aliases"] == ["latest"]
    assert versions[-1]["metadata"]["best_score"] == final["best_f_score"]
    assert versions[-1]["metadata"]["status"] == "done"


def test_a_continuation_names_its_parents_artifact_and_the_family_is_drawn(sweep, child, wandb_env, tmp_path):
    """Offline (W&B refuses use_artifact there) the parent's artifact name is in the run config; lineage.json
    records it too, and project-lineage draws sweep -> job 1 -> child -> grandchild from the files the runs wrote."""
    child_run = wandb_run(child / "wandb")
    run_cli(*TINY, "logger=wandb", "resume=reset_optimizer", f"resume.checkpoint={child}", "model.dropout=0.3",
            "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'grandchild'}", cwd=tmp_path, env_extra=wandb_env)
    run = wandb_run(tmp_path / "grandchild" / "wandb")
    artifact = f"model-{child_run['run_id']}:best"
    assert run["config"]["parent"]["artifact"] == artifact
    assert run["summary"]["parent_best"] == load(child / "checkpoints" / "best_model.pth")["best_f_score"]
    family = json.loads((tmp_path / "grandchild" / "lineage.json").read_text())
    assert family["parent"]["artifact"] == artifact and family["parent"]["run_dir"] == str(child.resolve())
    assert family["mode"] == "reset_optimizer" and family["changed"]["model.dropout"] == [0.1, 0.3]
    assert family["wandb"] == {"run_id": run["run_id"], "artifact": None}

    proc = subprocess.run([sys.executable, "-m", "project.commands.lineage", str(sweep), str(child.parent),
                           str(tmp_path), "--json", "--out", str(tmp_path / "family.png")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    (fam,) = json.loads(proc.stdout)["families"]
    jobs = [str(sweep.resolve() / str(i)) for i in range(4)]
    grandchild = "grandchild"  # shown relative to the current directory
    assert [(e["from"], e["to"], e["mode"]) for e in fam["edges"]] == [
        (jobs[1], str(child.resolve()), "reset_optimizer"), (str(child.resolve()), grandchild, "reset_optimizer")]
    assert fam["groups"] == [{"sweep": str(sweep.resolve()), "parent": None, "jobs": jobs}]
    nodes = {n["name"]: n for n in fam["nodes"]}
    assert nodes[str(child.resolve())]["tags"] == ["dropout-test"]
    for job in jobs:  # each job's best and last-5 spread as the run's own files have them
        scores = [float(r["val_f_score"]) for r in csv.DictReader(open(Path(job) / "metrics.csv", newline=""))]
        assert nodes[job]["best"] == load(Path(job) / "checkpoints" / "final_model.pth")["best_f_score"]
        assert nodes[job]["spread"] == pytest.approx(statistics.stdev(scores))
        assert nodes[job]["starts"] == 1 and nodes[job]["status"] == "done"
    leaves = {name: n["best"] for name, n in nodes.items() if name not in (jobs[1], str(child.resolve()))}
    assert fam["best_leaf"] == max(leaves, key=leaves.get)
    assert (tmp_path / "family.png").stat().st_size > 10_000


def test_preempted_run_restarted_in_its_dir_keeps_its_wandb_run(wandb_env, tmp_path):
    """SIGTERM (a preemption), then the same command again (a requeue): W&B ends the first part cleanly and the
    second part logs the remaining epochs to the same run id."""
    run_dir = tmp_path / "run"
    args = [*TINY, "logger=wandb", "trainer.max_epochs=4", f"hydra.run.dir={run_dir}"]
    stop_with_sigterm(run_dir, *args[:-1], cwd=tmp_path, env_extra=wandb_env)
    run_cli(*args, cwd=tmp_path, env_extra=wandb_env)

    first, second = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    first, second = wandb_run(first), wandb_run(second)
    assert first["run_id"] == second["run_id"]
    assert first["state"] == "finished" and first["summary"]["status"] == "interrupted by SIGTERM"
    assert second["summary"]["status"] == "done"
    assert first["steps"] + second["steps"] == [1, 2, 3, 4][:len(first["steps"] + second["steps"])]
    assert second["steps"][-1] == 4
    family = json.loads((run_dir / "lineage.json").read_text())  # one node, started twice
    assert (family["starts"], family["status"], family["mode"], family["epoch"]) == (2, "done", "new", 4)


def test_a_run_that_dies_is_marked_failed_not_finished(wandb_env, tmp_path):
    """train.py calls finish() in a `finally`: without a summary (an exception left the loop) W&B must show
    the run as failed, not as a finished run that merely stopped early."""
    code = ("import sys; from project.loggers import WandbLogger\n"
            "logger = WandbLogger(sys.argv[1], {'config': {'seed': 1}, 'run_name': 'dies', 'group': 'g', "
            "'job_type': 'none', 'tags': []})\n"
            "logger.log_epoch({'epoch': 1, 'phase': 'train', 'lr': 0.1, 'train_loss': 1.0, 'val_f_score': 0.3})\n"
            "logger.finish('done')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **wandb_env})
    assert proc.returncode == 0, proc.stderr
    run = wandb_run(tmp_path / "wandb")
    assert run["exit_code"] == 1 and run["steps"] == [1]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,train,0.1")


def test_a_run_left_open_does_not_swallow_the_next_jobs_run(wandb_env, tmp_path):
    """Jobs of a multirun share one process: if one job never reached finish(), the next job still gets a
    run of its own in its own run dir."""
    code = ("import sys; from project.loggers import WandbLogger\n"
            "meta = {'config': {}, 'run_name': 'job', 'group': 'g', 'job_type': 'none', 'tags': []}\n"
            "row = {'epoch': 1, 'phase': 'train', 'lr': 0.1, 'train_loss': 1.0, 'val_f_score': 0.3}\n"
            "first = WandbLogger(sys.argv[1], meta); first.log_epoch(row)  # never finished\n"
            "second = WandbLogger(sys.argv[2], meta); second.log_epoch(row); second.log_summary({}); second.finish()\n"
            "print(first.run_id, second.run_id)\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **wandb_env})
    assert proc.returncode == 0, proc.stderr
    first_id, second_id = proc.stdout.split()[-2:]
    first, second = wandb_run(tmp_path / "a" / "wandb"), wandb_run(tmp_path / "b" / "wandb")
    assert (first["run_id"], second["run_id"]) == (first_id, second_id) and first_id != second_id
    assert first["steps"] == [1] and second["steps"] == [1] and second["exit_code"] == 0


def test_unreachable_wandb_degrades_to_offline_with_one_warning(wandb_env, tmp_path):
    """An API key but no server (a closed port on this machine): training finishes, logged offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    env = {**wandb_env, "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"}
    run_cli(*TINY, "logger=wandb", "logger.init_timeout=2", "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env_extra=env)
    log = (tmp_path / "run" / "training.log").read_text()
    assert log.count("W&B is unreachable") == 1 and "wandb sync" in log
    final = load(tmp_path / "run" / "checkpoints" / "final_model.pth")
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    run = wandb_run(offline)
    assert run["run_id"] == final["logger"]["wandb_run_id"] and run["steps"] == [1]
