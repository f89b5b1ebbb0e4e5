"""A shared file never runs code (issue 24): a checkpoint from an ordinary tiny run with only its stored
`config.model` changed to `numpy.load` of a pickle beside it (which would create a canary file) is refused by every
command that builds from it, exit 2 with one paragraph, nothing written; the commands still work on files of this
framework and on model=custom runs when the class is typed; the opt-in builds a file's own class."""
import logging
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, TINY, TINY_DATA, run_cli, train_tiny
from project.errors import UserError

EXAMPLES = str(ROOT / "examples")
THEIRS = "their_pkg.their_model.MicroSegFormer"


class Canary:
    """Unpickling it creates the file `path`: what a crafted run_stats.npy would do when numpy.load reads it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def craft(parent_run, folder, model: dict) -> dict:
    """`folder` as a colleague's run dir: the parent's checkpoints with `config.model` replaced (every placeholder
    FILE / CANARY filled in), a canary run_stats.npy and metrics.csv beside them. Returns the paths."""
    canary = folder / "CANARY"
    (folder / "checkpoints").mkdir(parents=True)
    np.save(folder / "run_stats.npy", np.array([Canary(canary)], dtype=object), allow_pickle=True)
    fill = {"FILE": str(folder / "run_stats.npy"), "CANARY": str(canary)}
    model = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in model.items()}
    for name in ("best_model.pth", "last.pth"):
        saved = torch.load(parent_run / "checkpoints" / name)
        saved["config"]["model"] = dict(model)
        torch.save(saved, folder / "checkpoints" / name)
    shutil.copy(parent_run / "metrics.csv", folder / "metrics.csv")
    return {"dir": folder, "best": folder / "checkpoints" / "best_model.pth",
            "last": folder / "checkpoints" / "last.pth", "canary": canary}


NUMPY_LOAD = {"_target_": "numpy.load", "file": "FILE", "allow_pickle": True}


@pytest.fixture(scope="module")
def shared(parent_run, tmp_path_factory):
    return craft(parent_run, tmp_path_factory.mktemp("shared") / "run", NUMPY_LOAD)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """A model=custom run made here, with the user's class from examples/their_pkg."""
    cwd = tmp_path_factory.mktemp("custom")
    run_dir = cwd / "run"
    run_cli(*TINY_DATA, "model=custom", f"model._target_={THEIRS}", "+model.embed_dims=[8,16]", "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}", cwd=cwd, env_extra={"PYTHONPATH": f"{EXAMPLES}{os.pathsep}{ROOT}"})
    sys.path.insert(0, EXAMPLES)
    yield run_dir
    sys.path.remove(EXAMPLES)


def one_paragraph(text: str) -> str:
    assert "Traceback" not in text, text
    return " ".join(text.split())


def assert_refused(message: str, shared: dict, opt_in: str = "--trust-config") -> None:
    message = one_paragraph(message)
    assert f"{shared['best'] if 'last' not in message else shared['last']} names code that this installation would " \
           "not run: model._target_=numpy.load (this installation: project.models.MicroSegFormer from " \
           "conf/model/microsegformer.yaml)" in message, message
    assert opt_in in message and "nothing was built, read or written" in message, message
    assert not shared["canary"].exists()


# ---- the crafted file, at every entry point -------------------------------------------------------------------

def test_load_model_refuses_a_config_that_names_other_code(shared):
    from project import load_model

    with pytest.raises(UserError) as refused:
        load_model(shared["dir"])
    assert_refused(str(refused.value), shared, "trust_config=True")


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_commands_refuse_it_with_one_paragraph_and_write_nothing(command, shared, tmp_path, capsys):
    from importlib import import_module

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    argv = {"evaluate": [str(shared["dir"]), "--out", str(tmp_path / "out")],
            "predict": [str(shared["dir"]), "--images", str(images), "--out", str(tmp_path / "out")],
            "export": [str(shared["dir"]), "--format", "safetensors", "--out", str(tmp_path / "out")]}[command]
    assert import_module(f"project.commands.{command}").main(argv) == 2
    assert_refused(capsys.readouterr().err, shared)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    assert sorted(p.name for p in shared["dir"].iterdir()) == ["checkpoints", "metrics.csv", "run_stats.npy"]


def test_inspect_and_analyze_refuse_it_too_and_show_it_when_asked(shared, tmp_path, capsys):
    """They build nothing, but the rule is one: the file is named as naming other code (exit 2); --trust-config
    shows it, and still nothing runs."""
    from project.commands import analyze, inspect

    before = sorted(p.name for p in shared["dir"].iterdir())
    assert inspect.main([str(shared["best"])]) == 2
    assert_refused(capsys.readouterr().err, shared)
    assert analyze.main([str(shared["dir"]), "--out", str(tmp_path / "a.png")]) == 2
    assert "model._target_=numpy.load" in one_paragraph(capsys.readouterr().err)
    assert not (tmp_path / "a.png").exists() and sorted(p.name for p in shared["dir"].iterdir()) == before

    assert inspect.main([str(shared["best"]), "--trust-config"]) == 0
    assert "project-checkpoint-v2" in capsys.readouterr().out
    assert analyze.main([str(shared["dir"]), "--out", str(tmp_path / "a.png"), "--trust-config"]) == 0
    assert not shared["canary"].exists()


def test_inspect_and_analyze_read_a_custom_run_made_here_as_it_is(custom_run, capsys):
    """A target its own config left for the user to type (model=custom) is not asked for again by the commands
    that only read."""
    from project.commands import analyze, inspect

    assert inspect.main([str(custom_run / "checkpoints" / "best_model.pth")]) == 0, capsys.readouterr().err
    assert analyze.main([str(custom_run), "--out", str(custom_run / "a.png")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("mode", ["full", "reset_optimizer"])
def test_resume_from_it_is_refused_before_anything_is_built(mode, shared, tmp_path):
    which = "last" if mode == "full" else "best"
    proc = run_cli(*TINY, f"resume={mode}", f"resume.checkpoint={shared[which]}", "trainer.max_epochs=4",
                   f"hydra.run.dir={tmp_path / 'child'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = one_paragraph(proc.stderr)
    assert f"{shared[which]} names code that this installation would not run: model._target_=numpy.load" in message
    assert "resume.trust_config=true" in message, message
    assert not shared["canary"].exists() and not (tmp_path / "child").exists()


def test_hydras_blocklist_is_the_same_kind_of_paragraph(parent_run, tmp_path, capsys):
    from project.commands import export

    shell = craft(parent_run, tmp_path / "run", {"_target_": "os.system", "command": "touch CANARY"})
    out = ["--format", "safetensors", "--out", str(tmp_path / "out")]
    assert export.main([str(shell["dir"]), *out]) == 2
    assert "model._target_=os.system (this installation: project.models.MicroSegFormer" in \
        one_paragraph(capsys.readouterr().err)
    assert export.main([str(shell["dir"]), "--trust-config", *out]) == 2  # accepted, then Hydra's own refusal
    err = one_paragraph(capsys.readouterr().err)
    assert "Hydra's target blocklist refuses to build it" in err and "'os.system' is blocklisted" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "CANARY").exists()


def test_sweep_continue_refuses_recorded_overrides_that_pick_code(tmp_path):
    from project.commands import sweep

    folder = tmp_path / "sweep"
    task = ["model=custom", "model._target_=numpy.load", "+model.file=run_stats.npy", "model.dropout=0.1,0.2"]
    folder.mkdir()
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweep": {"dir": str(folder), "subdir": "${hydra.job.num}"},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
        "overrides": {"hydra": [f"hydra.sweep.dir={folder}", "hydra.mode=MULTIRUN"], "task": task},
        "runtime": {"cwd": str(tmp_path), "choices": {"hydra/launcher": "basic"}}}}))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError) as refused:
        sweep.plan_continuation(folder)
    message = one_paragraph(str(refused.value))
    assert f"{folder / 'multirun.yaml'} records overrides that pick the code to run: model._target_=numpy.load" in \
        message and "--trust-config" in message, message
    assert sweep.main(["continue", str(folder), "--dry-run"]) == 2 and sorted(tmp_path.rglob("*")) == before
    # typed again now (as the user who made it would), or accepted: the plan is made
    assert len(sweep.plan_continuation(folder, ["model._target_=numpy.load"]).jobs) == 2
    assert len(sweep.plan_continuation(folder, trust_config=True).jobs) == 2


def test_an_exports_config_json_names_its_class_from_this_installation(parent_run, tmp_path):
    import json

    from project.commands import export

    assert export.main([str(parent_run), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 0
    model, config = export.load_safetensors(tmp_path / "x")  # this installation's class for the recorded choice
    assert type(model).__name__ == "MicroSegFormer" and config["choices"] == {"model": "microsegformer"}
    config["model"] = {"_target_": "numpy.load", "file": str(tmp_path / "x" / "run_stats.npy"), "allow_pickle": True}
    (tmp_path / "x" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config.json names code that this installation would not run: "
                                        r"model._target_=numpy.load .* trust_config=True"):
        export.load_safetensors(tmp_path / "x")


# ---- what keeps working ----------------------------------------------------------------------------------------

def test_files_of_this_framework_load_and_export_as_before(parent_run, tmp_path, capsys):
    from project import load_model
    from project.commands import export

    model, cfg = load_model(parent_run)
    assert type(model).__name__ == "MicroSegFormer" and cfg.model._target_ == "project.models.MicroSegFormer"
    assert export.main([str(parent_run), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 0


def test_a_custom_run_made_here_needs_its_class_typed_or_accepted(custom_run, caplog):
    from project import load_model

    with pytest.raises(UserError) as refused:
        load_model(custom_run)
    message = one_paragraph(str(refused.value))
    assert (f"model._target_={THEIRS} (this installation: none, conf/model/custom.yaml leaves it for you to type)"
            in message and f"type the target (model._target_={THEIRS})" in message), message
    model, _ = load_model(custom_run, overrides=[f"model._target_={THEIRS}"])  # typed: exactly that class
    assert type(model).__module__ == "their_pkg.their_model"
    with caplog.at_level(logging.WARNING, logger="project.checkpoints.trust"):
        model, _ = load_model(custom_run, trust_config=True)  # the opt-in: the file's own class, logged
    assert type(model).__module__ == "their_pkg.their_model"
    assert "with its own targets, which this installation would not use (accepted by trust_config=True)" in \
        caplog.text and THEIRS in caplog.text


def test_resume_of_a_custom_run_with_its_class_typed_continues(custom_run, tmp_path):
    env = {"PYTHONPATH": f"{EXAMPLES}{os.pathsep}{ROOT}"}
    child = tmp_path / "child"
    proc = run_cli("resume=full", f"resume.checkpoint={custom_run}", "trainer.max_epochs=2",
                   f"hydra.run.dir={child}", cwd=tmp_path, env_extra=env, check=False)
    assert proc.returncode == 2 and "resume.trust_config=true" in one_paragraph(proc.stderr), proc.stderr
    run_cli("resume=full", f"resume.checkpoint={custom_run}", f"model._target_={THEIRS}", "trainer.max_epochs=2",
            f"hydra.run.dir={child}", cwd=tmp_path, env_extra=env)
    assert torch.load(child / "checkpoints" / "last.pth")["epoch"] == 2


def test_the_rule_itself():
    from project.checkpoints import trust

    config = {"model": {"_target_": "a.B", "blocks": [{"_target_": "c.D"}]}, "lr": 1}
    assert trust.targets(config) == {"model": "a.B", "model.blocks.0": "c.D"}
    assert trust.typed_targets(["model._target_=x.Y", "+model.head={_target_: z.W, k: 1}", "lr=2"]) == \
        {"model": "x.Y", "model.head": "z.W"}
    assert trust.mismatches(config, {"model": {"_target_": "a.B", "blocks": [{"_target_": "c.D"}]}}) == []
    assert trust.mismatches(config, {"model": {"_target_": "a.B"}}) == [("model.blocks.0", "c.D", None)]
    assert trust.names_code("hydra.searchpath=[file:///x]") and not trust.names_code("model.dropout=0.1")
