"""Data decides the task (issue 10, part 2), in-process: every shipped data x model pair with the data's default
objective, and every data x loss mismatch, either trains one step or stops with one paragraph naming both
choices and the fix, before anything is trained or written."""
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, run_cli
from project.recipe import loop, setup
from project.errors import UserError
from project.runtime import StopRequest
from test_configs_and_data import write_seg_folder
from test_swin_phases import write_image_folder

DATA = ["shapes", "shapes_multitask", "seg_folder", "image_folder"]
# every model option, so that a new one is covered: conf/model/*.yaml, less templates (a `???` value: custom.yaml)
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                if not re.search(r"^\w+:\s*\?\?\?", p.read_text(), re.M))
TRAINS = {("shapes", "microsegformer"), ("shapes", "unet"), ("seg_folder", "microsegformer"), ("seg_folder", "unet"),
          ("image_folder", "resnet"), ("shapes_multitask", "swin_mmoe"), ("shapes_multitask", "swin_mmoe_story")}
LOSSES = {"shapes": "ce_dice", "seg_folder": "ce_dice", "image_folder": "cross_entropy",
          "shapes_multitask": "cross_entropy"}  # the objective each data option selects


def test_the_model_list_is_every_option():
    assert {m for _, m in TRAINS} <= set(MODELS) and {"microsegformer", "unet", "resnet"} <= set(MODELS), MODELS
    assert "custom" not in MODELS


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    write_seg_folder(root / "seg", n=4, size=32)
    write_image_folder(root / "img", n=2)
    return root


@pytest.fixture(scope="module")
def config(folders):
    """compose(*overrides) as run.py composes, with Hydra's choices known (they name the options in errors)."""
    sizes = {"shapes": ["data.train_size=8", "data.val_size=4"], "shapes_multitask": ["data.train_size=8",
             "data.val_size=4"], "seg_folder": [f"data.root={folders / 'seg'}", "data.num_classes=3",
             "data.num_workers=0"], "image_folder": [f"data.root={folders / 'img'}", "data.num_workers=0"]}

    def compose_(data, *overrides):
        cfg = compose("config", return_hydra_config=True, overrides=[
            f"data={data}", *sizes[data], "data.image_size=64", "trainer.batch_size=8", "trainer.num_threads=2",
            "logger=csv", *overrides])
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield compose_


def build(cfg, run_dir):
    """Build as run.py does (every check of project/tasks.py runs here)."""
    return setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), [], None, run_dir, {})


def step(run):
    """One optimizer step (the train sets hold one batch)."""
    run.stop = StopRequest()
    try:
        loop.train_epoch(run, 0)
    finally:
        run.stop.close()
    return run


def one_step(cfg, run_dir):
    return step(build(cfg, run_dir))


@pytest.mark.parametrize("data", DATA)
def test_every_data_and_model_pair_trains_or_names_both(config, data, tmp_path):
    for model in MODELS:
        cfg = config(data, f"model={model}")
        assert cfg.loss._target_.endswith("Segmentation" if LOSSES[data] == "ce_dice" else "Classification")
        run_dir = tmp_path / model
        if (data, model) in TRAINS:
            run = build(cfg, run_dir)
            before = {k: v.clone() for k, v in run.model.state_dict().items()}
            step(run)
            assert run.state["progress"].global_step >= 1 and torch.isfinite(run.state["train_meter"].loss_sum)
            after = run.model.state_dict()
            assert any(not torch.equal(before[k], after[k]) for k in before), f"{data} x {model} did not train"
        else:
            with pytest.raises(UserError) as e:
                one_step(cfg, run_dir)
            msg = str(e.value)
            assert f"model={model}" in msg and f"data={data}" in msg and "use model=" in msg, msg
            assert "\n" not in msg and "Nothing was trained or written" in msg, msg


@pytest.mark.parametrize("data, loss", [(d, l) for d in DATA for l in ("ce_dice", "cross_entropy") if l != LOSSES[d]])
def test_every_data_and_loss_mismatch_names_both(config, data, loss, tmp_path):
    cfg = config(data, f"loss={loss}")
    with pytest.raises(UserError) as e:
        one_step(cfg, tmp_path / "run")
    msg = str(e.value)
    assert f"loss={loss}" in msg and f"data={data}" in msg and "Leave loss= out" in msg, msg


def test_a_refused_pair_on_the_command_line_leaves_no_run_dir(tmp_path):
    """What "Nothing was trained or written" promises, through run.py: Hydra makes the run dir before the job
    starts; a run refused for its data x model pair removes it again, and exits 2 with the paragraph."""
    run_dir = tmp_path / "outputs" / "refused"
    proc = run_cli("data=shapes", "model=resnet", "data.train_size=8", "data.val_size=4", "data.image_size=32",
                   "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "model=resnet" in err and "data=shapes" in err, proc.stdout + proc.stderr
    assert "Nothing was trained or written" in err and "Traceback" not in err, err
    assert not run_dir.exists(), f"the refused run left {sorted(p.name for p in run_dir.iterdir())}"


def test_input_channels_that_disagree_with_the_model(config, tmp_path):
    """Grayscale images for a 3-channel ResNet: the model's own error, with both choices and the fix."""
    with pytest.raises(UserError) as e:
        one_step(config("image_folder", "model=resnet", "data.in_channels=1"), tmp_path / "run")
    msg = str(e.value)
    assert "model=resnet and data=image_folder (classification data) do not fit" in msg
    assert "images (2, 1, 64, 64)" in msg and "RuntimeError" in msg, msg


def test_task_weights_for_tasks_the_data_lacks(config, tmp_path):
    with pytest.raises(UserError, match=r"loss.task_weights names \['size'\]"):
        one_step(config("shapes_multitask", "model=swin_mmoe", "+loss.task_weights.size=1.0"), tmp_path / "run")
