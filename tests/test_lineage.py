"""project-lineage (issue 19, part 3): the family of a run, drawn from the lineage.json files run dirs keep.

The family is built without training: each run dir gets the metrics.csv and environment.json a run leaves, and
the lineage.json that train.py's save() writes from its checkpoint dict (lineage.lineage_json, with lineage.origin
from the checkpoint's lineage entries, shaped as resume.Continuation.lineage_entry makes them). Real runs write the
same file: tests/test_wandb.py reads it back from a sweep, a reset_optimizer child and grandchild, and a preempted
run.
"""
import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from project.commands import lineage
from project.commands.compare import compare
from project.rundirs import lineage as record

CONFIG = {"model": {"dropout": 0.1}, "optimizer": {"lr": 2e-3, "weight_decay": 1e-4}, "trainer": {"max_epochs": 6},
          "logger": {"_target_": "project.loggers.CSVLogger"}, "tags": []}


def write_run(run_dir: Path, scores: list[float], *, starts: list[str], lineage_entries=(), parent=None,
              foreign=None, sweep=None, overrides=(), tags=(), start_score=None, status="done", config=None) -> dict:
    """A run dir as training leaves it: .hydra/config.yaml (what marks a run dir), metrics.csv (one validated row
    per epoch, a 'start' row first for a continuation that scored its starting weights), environment.json (one
    entry per start) and lineage.json written by lineage.lineage_json from the checkpoint dict save() would build."""
    config = config or CONFIG
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    rows = ([{"epoch": 0, "phase": "start", "val_f_score": start_score}] if start_score is not None else [])
    rows += [{"epoch": i + 1, "phase": "train", "val_f_score": s} for i, s in enumerate(scores)]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "phase", "val_f_score"])
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "environment.json").write_text(json.dumps([{"hostname": "node", "time": t} for t in starts]))
    candidates = [(start_score, 0)] * (start_score is not None) + [(s, i + 1) for i, s in enumerate(scores)]
    best, best_epoch = max(candidates, key=lambda c: c[0])
    ckpt = {"monitor": "f_score", "best_score": best, "best_epoch": best_epoch, "epoch": len(scores),
            "config": config, "logger": {}, "early_stopping": {"stopped": False},
            "start_score": {"score": start_score, "epoch": 0, "metric": "f_score"} if start_score is not None else None,
            "lineage": list(lineage_entries), "run_dir": str(run_dir)}
    origin = record.origin(ckpt["lineage"], parent=parent, foreign=foreign, sweep=sweep, overrides=overrides,
                           tags=tags)
    data = record.lineage_json(ckpt, run_dir, origin, status, higher_is_better=True)
    record.write(run_dir, data)
    return {**ckpt, "path": run_dir}


def entry(path: Path, mode: str, parent: dict, changed: dict, foreign: bool = False) -> dict:
    """A lineage entry as resume.Continuation.lineage_entry records the checkpoint a run continued."""
    return {"path": str(path), "sha256": "0" * 64, "mode": mode, "epoch": parent["epoch"], "global_step": 60,
            "monitor": None if foreign else "f_score", "best_score": parent["best_score"],
            "changed": {k: list(v) for k, v in changed.items()}}


@pytest.fixture()
def family(tmp_path, monkeypatch):
    """A run (started 3 times: two requeues), a resume=full into a new dir, two reset_optimizer children, a 2-job
    sweep from one child, and another script's file as the root of a second family; also a child whose parent was
    deleted."""
    monkeypatch.chdir(tmp_path)
    out, multi = tmp_path / "outputs", tmp_path / "multirun"
    run = write_run(out / "run", [0.40, 0.50, 0.55, 0.57, 0.58, 0.60],
                    starts=["2026-11-27T10:00:00", "2026-11-27T10:05:00", "2026-11-27T10:09:00"])
    best, last = run["path"] / "checkpoints" / "best_model.pth", run["path"] / "checkpoints" / "last.pth"
    full = write_run(out / "full", [0.40, 0.50, 0.55, 0.57, 0.58, 0.60, 0.61, 0.62],
                     starts=["2026-11-27T11:00:00"],
                     lineage_entries=[entry(last, "full", run, {"trainer.max_epochs": (6, 8),
                                                                "scheduler.max_epochs": (6, 8)})],
                     parent=run, overrides=["resume=full", "trainer.max_epochs=8"],
                     config={**CONFIG, "trainer": {"max_epochs": 8}})
    b1 = write_run(out / "b1", [0.62, 0.66, 0.70, 0.71, 0.72], start_score=0.60, starts=["2026-11-27T12:00:00"],
                   lineage_entries=[entry(best, "reset_optimizer", run, {"model.dropout": (0.1, 0.25)})],
                   parent=run, overrides=["resume=reset_optimizer", "model.dropout=0.25"], tags=["dropout-test"])
    b2 = write_run(out / "b2", [0.58, 0.61, 0.59, 0.60, 0.61], start_score=0.60, starts=["2026-11-27T12:30:00"],
                   lineage_entries=[entry(best, "reset_optimizer", run, {"optimizer.lr": (2e-3, 4e-4)})],
                   parent=run, overrides=["resume=reset_optimizer", "optimizer.lr=4e-4"])
    b1_best = b1["path"] / "checkpoints" / "best_model.pth"
    sweep = multi / "2026-11-27" / "13-00-00"
    for job, (wd, scores) in enumerate([(2e-4, [0.72, 0.73, 0.74]), (3e-4, [0.70, 0.80, 0.81])]):
        write_run(sweep / str(job), scores, start_score=0.72, starts=[f"2026-11-27T13:00:0{job}"],
                  lineage_entries=[entry(b1_best, "reset_optimizer", b1, {"optimizer.weight_decay": (1e-4, wd)})],
                  parent=b1, sweep=str(sweep.resolve()),
                  overrides=["resume=reset_optimizer", f"optimizer.weight_decay={wd}"])
    theirs = tmp_path / "their_best.pth"
    write_run(out / "from_theirs", [0.30, 0.35, 0.33], start_score=0.20, starts=["2026-11-27T09:00:00"],
              lineage_entries=[entry(theirs, "reset_optimizer", {"epoch": 92, "best_score": 0.6889}, {},
                                     foreign=True)],
              parent={"best_name": "best_f_score", "epoch": 92, "best_score": 0.6889, "run_dir": None},
              foreign=True, overrides=["resume=reset_optimizer"])
    gone = tmp_path / "outputs" / "deleted"
    write_run(out / "orphan", [0.50, 0.52], starts=["2026-11-27T14:00:00"], status="interrupted",
              lineage_entries=[entry(gone / "checkpoints" / "best_model.pth", "reset_optimizer",
                                     {"epoch": 4, "best_score": 0.51}, {"model.dropout": (0.1, 0.2)})],
              overrides=["resume=reset_optimizer", "model.dropout=0.2"])
    return tmp_path


def heads(text: str) -> list[str]:
    """The tree's node and group lines, each cut after the node's [mode] (the details are checked elsewhere)."""
    out = []
    for line in text.splitlines():
        if "]" in line:
            out.append(line[:line.index("]") + 1])
        elif "sweep " in line:
            out.append(line)
    return out


def test_the_family_tree_nodes_edges_groups_and_png(family, capsys):
    assert lineage.main([]) == 0  # default: outputs/ and multirun/ under the current directory
    text = capsys.readouterr().out
    sweep = "multirun/2026-11-27/13-00-00"
    assert heads(text) == [
        "their_best.pth  [file of another script]",
        "└── outputs/from_theirs  [reset_optimizer]",
        "outputs/run  [new]",
        "├── outputs/full  [continued]",
        "├── outputs/b1  [reset_optimizer]",
        f"│   └── sweep {sweep} (2 jobs)",
        f"│       ├── {sweep}/0  [reset_optimizer]",
        f"│       └── {sweep}/1  [reset_optimizer]",
        "└── outputs/b2  [reset_optimizer]",
        "outputs/deleted  [missing parent: moved or deleted]",
        "└── outputs/orphan  [reset_optimizer]",
    ]
    lines = text.splitlines()
    line = lambda start: next(x for x in lines if x.lstrip("│├└─ ").startswith(start))
    # a requeued run is one node with its starts; the best +- the spread of the last 5 validations
    spread = statistics.stdev([0.50, 0.55, 0.57, 0.58, 0.60])
    assert line("outputs/run  [new]") == (f"outputs/run  [new] best f_score 0.6000 +- {spread:.4f} (epoch 6 of 6, "
                                           "done), 3 starts")
    # a foreign root: its stored best is shown as another script's number, never compared
    assert line("their_best.pth") == ("their_best.pth  [file of another script] stored best_f_score 0.6889 "
                                      "(computed by another script)")
    # the best leaf: sweep job 1 (0.81), not b2, full or the other family's runs
    assert [x for x in lines if "<- best leaf" in x] == [
        line("outputs/from_theirs"), line(f"{sweep}/1"), line("outputs/orphan")]
    assert "interrupted at 2/6" in line("outputs/orphan")

    def details(name: str) -> list[str]:
        at = lines.index(line(name))
        return [x.lstrip("│ ") for x in lines[at + 1:at + 3]]

    # changed values against the parent (a value that follows a typed one, scheduler.max_epochs, is not repeated)
    assert details("outputs/full")[0] == "changed trainer.max_epochs 6 -> 8"
    assert details("outputs/b1")[0] == "changed model.dropout 0.1 -> 0.25"
    assert details(f"{sweep}/1")[0] == "changed optimizer.weight_decay 0.0001 -> 0.0003"
    # beat the parent within or beyond noise: against the starting weights scored here where the run scored them
    b1_spread = statistics.stdev([0.62, 0.66, 0.70, 0.71, 0.72])
    assert details("outputs/b1")[1] == (f"beats its starting weights scored here (0.6000): +0.1200 (beyond noise: "
                                        f"spread {max(b1_spread, spread):.4f})")
    b2_spread = statistics.stdev([0.58, 0.61, 0.59, 0.60, 0.61])
    assert details("outputs/b2")[1] == (f"beats its starting weights scored here (0.6000): +0.0100 (within noise: "
                                        f"spread {max(b2_spread, spread):.4f})")
    full_spread = statistics.stdev([0.57, 0.58, 0.60, 0.61, 0.62])
    assert details("outputs/full")[1] == (f"beats the parent's best at epoch 6 (0.6000): +0.0200 (within noise: "
                                          f"spread {max(full_spread, spread):.4f})")
    assert details("outputs/from_theirs")[0] == "no config to compare with (another script's file)"
    assert details("outputs/from_theirs")[1].startswith("beats its starting weights scored here (0.2000): +0.1500")
    assert "wrote lineage.png" in text

    png = Image.open(family / "lineage.png")
    assert png.format == "PNG" and png.size[0] > png.size[1] > 200
    assert len(png.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # boxes, colours and text, not a blank canvas


def test_json_nodes_and_edges_exactly(family, capsys):
    assert lineage.main(["outputs", "multirun", "--json", "--out", "family.png"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (family / "family.png").is_file()
    sweep = "multirun/2026-11-27/13-00-00"
    fams = result["families"]
    assert [[(n["name"], n["kind"], n["mode"], n["starts"]) for n in f["nodes"]] for f in fams] == [
        [("their_best.pth", "foreign", "foreign", None), ("outputs/from_theirs", "run", "reset_optimizer", 1)],
        [("outputs/run", "run", "new", 3), ("outputs/full", "run", "continued", 1),
         ("outputs/b1", "run", "reset_optimizer", 1), (f"{sweep}/0", "run", "reset_optimizer", 1),
         (f"{sweep}/1", "run", "reset_optimizer", 1), ("outputs/b2", "run", "reset_optimizer", 1)],
        [("outputs/deleted", "missing", "missing", None), ("outputs/orphan", "run", "reset_optimizer", 1)],
    ]
    assert [[(e["from"], e["to"], e["mode"]) for e in f["edges"]] for f in fams] == [
        [("their_best.pth", "outputs/from_theirs", "reset_optimizer")],
        [("outputs/run", "outputs/full", "continued"), ("outputs/run", "outputs/b1", "reset_optimizer"),
         ("outputs/b1", f"{sweep}/0", "reset_optimizer"), ("outputs/b1", f"{sweep}/1", "reset_optimizer"),
         ("outputs/run", "outputs/b2", "reset_optimizer")],
        [("outputs/deleted", "outputs/orphan", "reset_optimizer")],
    ]
    assert fams[1]["groups"] == [{"sweep": sweep, "parent": "outputs/b1", "jobs": [f"{sweep}/0", f"{sweep}/1"]}]
    assert [f["best_leaf"] for f in fams] == ["outputs/from_theirs", f"{sweep}/1", "outputs/orphan"]
    verdicts = {n["name"]: n["vs_parent"] for f in fams for n in f["nodes"]}
    assert verdicts["outputs/b2"]["noise"] == "within" and verdicts["outputs/b1"]["noise"] == "beyond"
    assert verdicts[f"{sweep}/0"]["gain"] == pytest.approx(0.02)
    assert verdicts["outputs/orphan"] == {"compared": True, "reference": 0.51, "what": "the parent's best at epoch 4",
                                          "gain": pytest.approx(0.01), "beats": True, "noise": "within",
                                          "spread": pytest.approx(statistics.stdev([0.50, 0.52]))}


def test_a_moved_tree_keeps_its_family_and_a_parent_outside_the_paths_is_followed(family, capsys):
    """Run dirs copied elsewhere (a cluster's outputs/ on a laptop): children still find their parents by the run
    dir each lineage.json records; a parent outside the given paths is read where the child says it is."""
    moved = family / "laptop"
    moved.mkdir()
    (family / "outputs").rename(moved / "outputs")
    (family / "multirun").rename(moved / "multirun")
    assert lineage.main([str(moved / "outputs"), "--json"]) == 0
    fams = json.loads(capsys.readouterr().out)["families"]
    names = [[n["name"] for n in f["nodes"]] for f in fams]
    assert ["laptop/outputs/run", "laptop/outputs/full", "laptop/outputs/b1", "laptop/outputs/b2"] in names
    assert lineage.main([str(moved / "multirun")]) == 0  # only the sweep: its parents are found by their old path
    text = capsys.readouterr().out
    assert "outputs/b1  [missing parent: moved or deleted]" in text  # b1's recorded dir is gone: shown, no error


def test_nothing_to_show_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert lineage.main([]) == 2
    assert "No run with a lineage.json under outputs/, multirun/" in capsys.readouterr().err
    assert lineage.main(["nowhere"]) == 2
    assert "'nowhere' does not exist" in capsys.readouterr().err


def test_compare_shows_the_tags(tmp_path):
    """tags=[...] are a column of compare's table (not a swept value)."""
    for name, tags, score in (("a", ["baseline"], 0.5), ("b", ["dropout-test", "v2"], 0.6)):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"model:\n  dropout: {0.1 if name == 'a' else 0.25}\n"
                                                    f"tags: {json.dumps(tags)}\n")
        (run / "metrics.csv").write_text(f"epoch,phase,val_f_score\n1,train,{score}\n")
    result = compare([str(tmp_path / "a"), str(tmp_path / "b")], out=tmp_path)
    header, first, second = result["table"]
    assert "tags" in header and "tags" not in result["swept"]
    assert first[header.index("tags")] == "dropout-test,v2" and second[header.index("tags")] == "baseline"


def test_describe_reads_the_run_dirs_own_files(tmp_path):
    """lineage.json's numbers: best from the checkpoint, spread and level from metrics.csv (the 'start' row left
    out, as the noise rule says), starts from environment.json, the W&B artifact name when checkpoints are logged."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,phase,val_f_score\n0,start,0.9\n1,train,0.5\n2,train,0.6\n3,train,\n")
    (run / "environment.json").write_text(json.dumps([{"time": "2026-11-27T10:00:00"}, {"time": "x"}]))
    ckpt = {"monitor": "f_score", "best_score": 0.9, "best_epoch": 0, "epoch": 3, "logger": {"wandb_run_id": "abc"},
            "config": {"trainer": {"max_epochs": 3}, "logger": {"_target_": "project.loggers.WandbLogger",
                                                                  "log_checkpoints": True}},
            "start_score": {"score": 0.9, "epoch": 0}}
    data = record.lineage_json(ckpt, run, record.origin([]), "done")
    assert data["best"] == 0.9 and data["spread"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert data["last_mean"] == pytest.approx(0.55) and data["last_n"] == 2 and data["starts"] == 2
    assert data["started"] == "2026-11-27T10:00:00" and data["mode"] == "new" and data["parent"] is None
    assert data["wandb"] == {"run_id": "abc", "artifact": "model-abc"}
    assert record.parent_artifact(ckpt, run / "checkpoints" / "best_model.pth") == "model-abc:best"
    assert record.parent_artifact(ckpt, run / "checkpoints" / "last.pth") == "model-abc:latest"
    assert record.parent_artifact({**ckpt, "config": {"logger": {"_target_": "project.loggers.CSVLogger"}}},
                                   run / "x.pth") is None
    # a run without a validated best yet (NaN in the checkpoint's summary keys) has none in lineage.json
    assert record.lineage_json({**ckpt, "best_score": float("nan")}, run, record.origin([]), "running")["best"] is None
