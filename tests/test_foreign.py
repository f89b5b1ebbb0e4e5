"""Continuing from checkpoints this framework did not write: the user's own script's best_model.pth, a bare state
dict, DDP / torch.compile prefixes, .safetensors (issue 10, part 1)."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, TINY, load, run_cli, train_tiny
from project import resume
from project.checkpoints import files as checkpoint
from project.recipe import setup


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """What users have: the story's dict (epoch 92, AdamW state, best_f_score as np.float64) and the same weights
    as a bare state dict, with DDP's and torch.compile's prefixes, and as .safetensors."""
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("theirs")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=TINY)
    torch.manual_seed(1)  # not the run's seed: loaded weights differ from a fresh initialisation
    model = instantiate(cfg.model, num_classes=4, in_channels=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    weights = model.state_dict()
    torch.save({"epoch": 92, "model_state_dict": weights, "optimizer_state_dict": optimizer.state_dict(),
                "best_f_score": np.float64(0.6889)}, out / "their_best_model.pth")
    torch.save(weights, out / "bare.pth")
    torch.save({f"module.{k}": v for k, v in weights.items()}, out / "ddp.pth")
    torch.save({f"_orig_mod.{k}": v for k, v in weights.items()}, out / "compiled.pth")
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "weights.safetensors")
    return out


@pytest.mark.parametrize("name, prefix", [("their_best_model.pth", None), ("bare.pth", None),
                                          ("ddp.pth", "module."), ("compiled.pth", "_orig_mod."),
                                          ("weights.safetensors", None)])
def test_reset_optimizer_continues_from_their_file(files, tmp_path, name, prefix):
    proc = train_tiny(tmp_path / "child", "resume=reset_optimizer", f"resume.checkpoint={files / name}",
                      "trainer.max_epochs=1", cwd=tmp_path)
    assert "104 matched, 0 missing" in proc.stdout
    assert (f"Stripped the key prefix {prefix!r}" in proc.stdout) == (prefix is not None)
    theirs = torch.load(files / "bare.pth")
    child = load(tmp_path / "child" / "checkpoints" / "final_model.pth")["model_state_dict"]
    w = "encoder.0.embed.proj.weight"  # one epoch of training moves the loaded weights only a little
    assert (child[w] - theirs[w]).abs().max() < 0.05 < theirs[w].abs().max()


def test_their_best_score_is_shown_but_their_weights_are_scored_here(files, tmp_path):
    """Their 0.6889 came from another metric on other data: shown, never the bar. The starting weights are scored
    here first (a metrics.csv row with phase "start") and are the first candidate for best_model.pth."""
    proc = train_tiny(tmp_path / "child", "resume=reset_optimizer", "model.dropout=0.25", "trainer.max_epochs=1",
                      f"resume.checkpoint={files / 'their_best_model.pth'}", cwd=tmp_path)
    assert "stored best 0.6889 was computed by another script" in proc.stdout
    assert "does not beat the parent" not in proc.stdout and "Starting weights, scored here: val f_score" in proc.stdout
    assert "their_best_model.pth@92 (reset_optimizer; epoch 92 as stored by the file (its own count;" in proc.stdout
    assert "were dropped by" not in proc.stdout  # no empty dropped-modules clause for their file
    child = load(tmp_path / "child" / "checkpoints" / "final_model.pth")
    (entry,) = child["lineage"]
    assert entry["best_score"] == 0.6889 and entry["epoch"] == 92 and entry["mode"] == "reset_optimizer"
    assert child["parent_best"]["score"] == 0.6889 and child["parent_best"]["foreign"] and child["epoch"] == 1
    start = child["start_score"]
    rows = (tmp_path / "child" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert first["epoch"] == "0" and first["phase"] == "start" and float(first["val_f_score"]) == start["score"]
    best = load(tmp_path / "child" / "checkpoints" / "best_model.pth")
    assert best["best_f_score"] >= start["score"] and best["best_f_score"] < 0.6889  # tiny data: their bar is unreachable


def test_full_keeps_their_optimizer_state_and_epoch(files, tmp_path):
    story = files / "their_best_model.pth"
    proc = train_tiny(tmp_path / "cont", "resume=full", f"resume.checkpoint={story}", "trainer.max_epochs=94",
                      cwd=tmp_path)
    out = proc.stdout
    assert "NOT a bit-exact continuation" in out and "restored  optimizer state" in out
    assert "fresh     RNG" in out and "epochs 92 -> 94" in out
    assert ("epoch            epoch 92 as stored by the file (its own count; no history to say whether it counts "
            "from 0 or 1): taken as the epochs done, training goes on with epoch 93") in out
    assert "stored best" in out and "0.6889: computed by another script, not comparable" in out
    final = load(tmp_path / "cont" / "checkpoints" / "final_model.pth")
    assert final["start_score"]["epoch"] == 92 and final["best_f_score"] >= final["start_score"]["score"]
    assert final["epoch"] == 94 and final["lineage"][0]["best_score"] == 0.6889
    steps = {float(s["step"]) for s in final["optimizer_state_dict"]["state"].values()}
    assert steps == {1 + 2 * 6}  # their one AdamW step, then two epochs of 6


def test_full_restores_their_adam_moments_exactly(files, tmp_path):
    """In-process: the optimizer state right after loading equals the file's, tensor for tensor."""
    story = files / "their_best_model.pth"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "resume=full", f"resume.checkpoint={story}",
                                           "trainer.max_epochs=94"])
    plan = resume.decide(cfg, tmp_path / "run", [], typed=None)
    run = setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), [], plan, tmp_path / "run", {})
    theirs = checkpoint.read(story)["optimizer_state_dict"]["state"]  # (np.float64 inside: allow-listed)
    ours = run.state["optimizer"].state_dict()["state"]
    assert ours.keys() == theirs.keys() and len(ours) == 101
    for i in theirs:
        assert all(torch.equal(ours[i][k], theirs[i][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    progress = run.state["progress"]
    # their epoch is restored; their best (another script's metric) is shown as the parent's, never the bar
    assert progress.epoch == 92 and progress.best_score is None
    assert progress.parent_best["score"] == 0.6889 and progress.parent_best["foreign"]


def test_full_without_optimizer_state_suggests_reset_optimizer(files, tmp_path):
    proc = run_cli(*TINY, "resume=full", f"resume.checkpoint={files / 'bare.pth'}", "trainer.max_epochs=3",
                   f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err
    assert "bare.pth has none" in err and "resume=reset_optimizer" in err


def test_inspect_describes_their_file(files):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "project.commands.inspect", str(files / "their_best_model.pth")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "not written by this framework" in proc.stdout and "under 'model_state_dict': 104 tensors" in proc.stdout
    assert ("holds        weights, optimizer state, epoch 92 as stored by the file (its own count; no history to "
            "say whether it counts from 0 or 1), best_f_score 0.6889") in proc.stdout
    assert "lacks        a config this framework can use, RNG state, data position" in proc.stdout
    ddp = subprocess.run([sys.executable, "-m", "project.commands.inspect", str(files / "ddp.pth")], capture_output=True,
                         text=True, cwd=ROOT).stdout
    assert "every key starts with module." in ddp and "resume=full cannot (no optimizer state)" in ddp
