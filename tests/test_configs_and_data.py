"""Config groups compose as documented; seg_folder reads real PNG files; the second model trains."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT, TINY_TRAINER, load, run_cli


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_story_preset_reproduces_the_continuation_config():
    cfg = composed("+experiment=lmsa_continue_from_best")
    assert cfg.resume.mode == "reset_optimizer" and cfg.resume.checkpoint == "latest"
    assert (cfg.model.dropout, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.20, 4e-4, 2e-4)
    assert (cfg.trainer.max_epochs, cfg.trainer.early_stopping.patience, cfg.loss.dice_weight) == (200, 30, 1.5)


@pytest.mark.parametrize("group, options", [
    ("model", ["microsegformer", "unet"]), ("optimizer", ["adamw", "adam", "sgd"]),
    ("scheduler", ["cosine", "step", "plateau", "none"]), ("resume", ["none", "full", "reset_optimizer"]),
])
def test_every_option_builds(group, options):
    model = torch.nn.Linear(2, 2)
    for option in options:
        cfg = composed(f"{group}={option}")
        if group == "model":
            net = instantiate(cfg.model, num_classes=4, in_channels=3)
            assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 32, 32)
        if group in ("optimizer", "scheduler"):
            optimizer = instantiate(cfg.optimizer)(model.parameters())
            instantiate(cfg.scheduler)(optimizer).step(0.5)
            assert optimizer.param_groups[0]["lr"] > 0


def write_seg_folder(root, n, size=24):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            mask[4:12, 4:12], mask[14:20, 10:22] = 1, 2
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image[mask == 1], image[mask == 2] = (200, 40, 40), (40, 200, 40)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.jpg" if i % 2 else
                                        root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i:03d}.png")


def test_seg_folder_trains_on_real_png_files(tmp_path):
    write_seg_folder(tmp_path / "data", n=6)
    run_cli(*TINY_TRAINER, "model=unet", "model.base_channels=4", "data=seg_folder", f"data.root={tmp_path / 'data'}",
            "data.num_classes=3", "data.image_size=32", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path)
    ckpt = load(tmp_path / "run" / "checkpoints" / "final_model.pth")
    assert ckpt["config"]["data"]["root"] == str(tmp_path / "data")
    assert ckpt["model_state_dict"]["head.weight"].shape[0] == 3  # num_classes reached the model
    assert 0 <= ckpt["val_f_score"] <= 1


def test_seg_folder_bad_root_is_a_clear_error(tmp_path):
    proc = run_cli(*TINY_TRAINER, "data=seg_folder", f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "data.root=" in err and "ROOT/train/{images,masks}" in err
