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
    assert "stored best 0.5000 was computed by another script" in proc.stdout  # shown, not a bar
    child = load(tmp_path / "b" / "checkpoints" / "final_model.pth")
    assert child["config"]["model"]["_target_"] == "mypkg.nets.TinyNet" and child["lineage"][0]["epoch"] == 40
    w = "body.0.weight"  # one epoch moves the loaded weights only a little
    assert (child["model_state_dict"][w] - theirs.state_dict()[w]).abs().max() < 0.05


def test_custom_model_without_a_class_is_a_clear_error(tmp_path):
    proc = run_cli(*TINY_DATA, "model=custom", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "model._target_ has no value" in err and "model._target_=mypkg.nets.MyNet" in err


# --- the user's class as it is (issue 16, part 4): its own signature decides what it is passed -------------------

STORY = '''
import torch
from torch import nn
from torch.nn import functional as F


class MicroSegFormer(nn.Module):
    """The story's network as its author wrote it: RGB only, so no in_channels argument."""

    def __init__(self, num_classes=19, embed_dims=None, depths=None, sr_ratios=None, dropout=0.15, use_lmsa=True):
        super().__init__()
        layers, channels = [], 3
        for dim, depth in zip(embed_dims or [8, 16], depths or [1, 1]):
            layers += [nn.Conv2d(channels, dim, 3, stride=2, padding=1), nn.GELU()]
            layers += [nn.Conv2d(dim, dim, 3, padding=1), nn.GELU()] * (depth - 1)
            channels = dim
        self.encoder = nn.Sequential(*layers)
        self.lmsa = nn.Conv2d(channels, channels, 1) if use_lmsa else nn.Identity()
        self.drop = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(channels, num_classes, 1)
        self.register_buffer("class_weights", torch.ones(num_classes))  # set by its training script, never trained

    def forward(self, x):
        return F.interpolate(self.head(self.drop(self.lmsa(self.encoder(x)))), size=x.shape[-2:], mode="bilinear")


class PlainNet(nn.Module):
    """A network without dropout."""

    def __init__(self, num_classes, in_channels=3, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))
'''

# the classes' own plain training loop, as users write it: the best epoch's dict with a numpy best_f_score
OWN_LOOP = '''
import sys

import numpy as np
import torch
from torch.nn import functional as F

from storypkg.model import MicroSegFormer, PlainNet


def fit(model, path):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4, 32, 32))
    best = -1.0
    for epoch in range(1, 4):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        f_score = np.float64(0.3 + 0.01 * epoch)
        if f_score > best:
            best = f_score
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "best_f_score": best,
                        "loss": loss.item(), "lr": 1e-3}, path)


torch.manual_seed(0)
story = MicroSegFormer(num_classes=4, embed_dims=[8, 16], dropout=0.1)
story.class_weights.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
fit(story, sys.argv[1] + "/story_best_model.pth")
fit(PlainNet(num_classes=4, width=6), sys.argv[1] + "/plain_best_model.pth")
'''


def test_their_classes_as_they_are_train_and_continue_from_their_own_best_model(tmp_path):
    import subprocess
    import sys

    from project.checkpoints import files as checkpoint

    (tmp_path / "storypkg").mkdir()
    (tmp_path / "storypkg" / "__init__.py").write_text("")
    (tmp_path / "storypkg" / "model.py").write_text(STORY)
    (tmp_path / "storypkg" / "own_loop.py").write_text(OWN_LOOP)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-m", "storypkg.own_loop", str(tmp_path)], cwd=tmp_path, check=True,
                   env={**os.environ, **env})
    story_file, plain_file = tmp_path / "story_best_model.pth", tmp_path / "plain_best_model.pth"
    theirs = checkpoint.read(story_file)["model_state_dict"]  # numpy best_f_score: allow-listed

    # the SegFormer-shaped class: no in_channels (left out, and the log says so), its dropout set from the config
    proc = run_cli(*TINY_DATA, "model=custom", "model._target_=storypkg.model.MicroSegFormer", "+model.embed_dims=[8,16]",
                   "model.dropout=0.1", "resume=reset_optimizer", f"resume.checkpoint={story_file}",
                   "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'story'}", cwd=tmp_path, env_extra=env)
    out = proc.stdout
    assert ("storypkg.model.MicroSegFormer takes no in_channels argument: the data's in_channels=3 not passed "
            "(it gets num_classes=4)") in out, out
    assert f"Parameter matching with {story_file}: {len(theirs)} matched, 0 missing" in out, out
    assert "dropout p=0.1," in out and "stored best 0.3300 was computed by another script" in out, out
    child = load(tmp_path / "story" / "checkpoints" / "final_model.pth")
    (parent,) = child["lineage"]
    assert parent["path"] == str(story_file) and parent["sha256"] == checkpoint.sha256(story_file)
    assert parent["epoch"] == 3 and parent["mode"] == "reset_optimizer" and child["epoch"] == 1
    weights = child["model_state_dict"]
    # their weights were the start: the buffer their script set (a fresh model has ones) is theirs exactly, and
    # one epoch moved the trained weights only a little
    assert torch.equal(weights["class_weights"], torch.tensor([0.5, 1.0, 2.0, 3.0]))
    w = "encoder.0.weight"
    assert (weights[w] - theirs[w]).abs().max() < 0.05 < theirs[w].abs().max()

    # the class without dropout: trains and continues likewise; model.dropout for it is refused, listing its arguments
    plain = ["model=custom", "model._target_=storypkg.model.PlainNet", "+model.width=6"]
    proc = run_cli(*TINY_DATA, *plain, "resume=reset_optimizer", f"resume.checkpoint={plain_file}",
                   "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path, env_extra=env)
    assert "takes no" not in proc.stdout and "dropout p=none," in proc.stdout, proc.stdout
    child = load(tmp_path / "plain" / "checkpoints" / "final_model.pth")
    assert child["lineage"][0]["sha256"] == checkpoint.sha256(plain_file) and child["lineage"][0]["epoch"] == 3
    plain_theirs = checkpoint.read(plain_file)["model_state_dict"]
    assert f"Parameter matching with {plain_file}: {len(plain_theirs)} matched, 0 missing" in proc.stdout, proc.stdout
    # their weights were the start: its 6 steps of a fresh AdamW (lr at most 2e-3; |m_hat / sqrt(v_hat)| <= 2.3 in
    # the first steps) move each weight by less than 0.03, while a fresh model's (the run's seed) differ by ~0.2
    assert child["model_state_dict"].keys() == plain_theirs.keys() and child["global_step"] == 6
    for key, value in plain_theirs.items():
        assert (child["model_state_dict"][key] - value).abs().max() < 0.03, f"{key}: not started from their weights"
    refused = run_cli(*TINY_DATA, *plain, "model.dropout=0.2", f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path,
                      env_extra=env, check=False)
    err = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "Traceback" not in err, refused.stdout + err
    assert ("model=custom sets model.dropout=0.2, but storypkg.model.PlainNet does not take it: its arguments are "
            "(num_classes, in_channels=3, width=8)") in err and "Nothing was trained or written" in err, err
    assert not (tmp_path / "refused").exists()
