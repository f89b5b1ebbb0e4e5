"""Your own model (and config dir) with this framework: a class from your package, trained by run.py and
continued from the best_model.pth your own script wrote (issue 10, part 6)."""
import os
import textwrap

import torch

from conftest import TINY_DATA, load, run_cli

NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's segmentation network: (N, in_channels, H, W) -> (N, num_classes, H, W) logits."""

    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))
'''


def write_package(root):
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "nets.py").write_text(NETS)
    (root / "myconf" / "model").mkdir(parents=True)
    (root / "myconf" / "model" / "tinynet.yaml").write_text(textwrap.dedent("""\
        # a config group option of the user's own, found through hydra.searchpath
        _target_: mypkg.nets.TinyNet
        width: 12
        """))


def test_own_model_trains_and_continues_from_its_own_best_model(tmp_path):
    write_package(tmp_path)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run_cli(*TINY_DATA, "model=custom", "model._target_=mypkg.nets.TinyNet", "+model.width=6",
            f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, env_extra=env)
    ckpt = load(tmp_path / "a" / "checkpoints" / "final_model.pth")
    assert ckpt["model_state_dict"]["body.0.weight"].shape == (6, 3, 3, 3)

    # the user's own training script saved their best model: continue from it with a fresh optimizer
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        from mypkg.nets import TinyNet
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(3)
    theirs = TinyNet(num_classes=4, in_channels=3, width=12)
    torch.save({"epoch": 40, "model_state_dict": theirs.state_dict(), "best_f_score": 0.5}, tmp_path / "best_model.pth")
    proc = run_cli(*TINY_DATA, f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "model=tinynet",
                   "resume=reset_optimizer", f"resume.checkpoint={tmp_path / 'best_model.pth'}",
                   "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, env_extra=env)
    assert "5 matched, 0 missing" not in proc.stdout and "6 matched, 0 missing" in proc.stdout
    assert "the parent's best 0.5000 (epoch 40 of" in proc.stdout
    child = load(tmp_path / "b" / "checkpoints" / "final_model.pth")
    assert child["config"]["model"]["_target_"] == "mypkg.nets.TinyNet" and child["lineage"][0]["epoch"] == 40
    w = "body.0.weight"  # one epoch moves the loaded weights only a little
    assert (child["model_state_dict"][w] - theirs.state_dict()[w]).abs().max() < 0.05


def test_custom_model_without_a_class_is_a_clear_error(tmp_path):
    proc = run_cli(*TINY_DATA, "model=custom", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "model._target_ has no value" in err and "model._target_=mypkg.nets.MyNet" in err
