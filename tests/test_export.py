"""project-export (issue 17, part 4) and `from project import load_model`: a trained run's model as safetensors +
config.json, torch.export's .pt2 and ONNX, each loaded back the way a user elsewhere would (a model built from
config.json alone, torch.export.load, onnxruntime) and compared with the model the run validated."""
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli

TRAIN = ["trainer.max_epochs=1", "data.image_size=32", "logger=csv", "trainer.num_threads=1"]
SHAPES = ["data.train_size=32", "data.val_size=8", "trainer.batch_size=8"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny U-Net run that validated with its EMA copy (trainer.ema.decay=0.9): best_model.pth's validated
    weights are ema_state_dict, which differ from the raw training weights."""
    cwd = tmp_path_factory.mktemp("export")
    run_cli(*TRAIN, *SHAPES, "model.base_channels=4", "trainer.ema.decay=0.9", f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="module")
def best(run):
    saved = torch.load(run / "checkpoints" / "best_model.pth")
    assert saved["validated_weights"] == "ema"
    assert not all(torch.equal(saved["ema_state_dict"][k], saved["model_state_dict"][k])
                   for k in saved["model_state_dict"]), "EMA weights equal to the training weights prove nothing"
    return saved


def export(*args, cwd=None) -> subprocess.CompletedProcess:
    """The command as users type it (python -m project.commands.export is project-export's module)."""
    return subprocess.run([sys.executable, "-m", "project.commands.export", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def export_here(capsys, *args) -> tuple[int, str]:
    """The same command in this process (saves a torch start-up per call): exit status and what it printed."""
    from project.commands.export import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def image(batch: int, seed: int = 0) -> torch.Tensor:
    """A random picture normalised as config.json says: (pixel / 255 - 0.5) / 0.25."""
    pixels = torch.randint(0, 256, (batch, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).float()
    return (pixels / 255 - 0.5) / 0.25


def eager(run, x, ema="auto"):
    from project import load_model

    model, _ = load_model(run, ema=ema)
    with torch.no_grad():
        return model(x)


def only_outputs(folder: Path, name: str):
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, "config.json"]), "temporary files left behind"


def test_safetensors_export_holds_the_validated_weights_and_what_using_them_needs(run, best, tmp_path, capsys):
    out = tmp_path / "exported"
    proc = export(run, "--format", "safetensors", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    only_outputs(out, "model.safetensors")
    from project import load_model

    n_params = sum(p.numel() for p in load_model(run)[0].parameters())
    assert f"parameters: {n_params:,} (UNet)" in proc.stdout and "weights bit for bit" in proc.stdout, proc.stdout

    config = json.loads((out / "config.json").read_text())
    source = run / "checkpoints" / "best_model.pth"
    assert config["source"]["checkpoint"] == str(source.resolve())
    assert config["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert config["weights"] == "ema" and config["task"] == "segmentation" and config["parameters"] == n_params
    assert config["classes"] == ["background", "ellipse", "rectangle", "triangle"]
    assert len(config["colors"]) == 4 and config["colors"][0] == [0, 0, 0] and config["flip_pairs"] == []
    assert config["input"]["shape"] == ["batch", 3, 32, 32] and config["image_size"] == 32
    assert config["in_channels"] == 3
    assert config["normalization"] == {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert config["output"] == [{"name": "logits", "shape": ["batch", 4, 32, 32], "dtype": "float32"}]
    assert config["model"]["_target_"] == "project.models.UNet" and config["model"]["base_channels"] == 4
    assert config["model_args"] == {"num_classes": 4, "in_channels": 3}
    assert config["check"]["rtol"] == 0 and config["check"]["atol"] == 0

    # elsewhere: the class config.json names, its arguments, the weights; no checkpoint and no framework code
    from importlib import import_module

    from safetensors.torch import load_file

    module, name = config["model"]["_target_"].rsplit(".", 1)
    args = {k: v for k, v in config["model"].items() if k != "_target_"}
    model = getattr(import_module(module), name)(**args, **config["model_args"]).eval()
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == best["ema_state_dict"].keys()
    assert all(torch.equal(weights[k], best["ema_state_dict"][k]) for k in weights), "not the validated EMA weights"
    model.load_state_dict(weights)
    with torch.no_grad():
        assert torch.equal(model(image(2)), eager(run, image(2)))

    # --ema off: the raw training weights, and config.json says so
    code, printed = export_here(capsys, run, "--format", "safetensors", "--out", tmp_path / "raw", "--ema", "off")
    assert code == 0 and "model weights" in printed, printed
    assert json.loads((tmp_path / "raw" / "config.json").read_text())["weights"] == "model"
    raw = load_file(tmp_path / "raw" / "model.safetensors")
    assert all(torch.equal(raw[k], best["model_state_dict"][k]) for k in raw)


def test_pt2_export_runs_any_batch_size(run, tmp_path, capsys):
    code, printed = export_here(capsys, run, "--format", "pt2", "--out", tmp_path)
    assert code == 0, printed
    only_outputs(tmp_path, "model.pt2")
    assert "torch.export.load vs the eager model at batch 1 and 3 (traced at 2" in printed, printed
    assert "rtol 1e-05, atol 1e-06" in printed and "argmax agrees at 100.00%" in printed, printed
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    for n in (1, 5):  # neither is the traced batch of 2
        x = image(n, seed=n)
        with torch.no_grad():
            got, want = program(x), eager(run, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(run, tmp_path, capsys):
    import onnxruntime

    code, printed = export_here(capsys, run, "--format", "onnx", "--out", tmp_path)
    assert code == 0, printed
    only_outputs(tmp_path, "model.onnx")
    assert "onnxruntime CPUExecutionProvider vs the eager model at batch 1 and 3" in printed, printed
    assert "rtol 0.0001, atol 1e-05" in printed and "[torch.onnx]" not in printed, printed
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.shape, returned.name) == ("image", ["batch", 3, 32, 32], "logits")
    for n in (2, 4):
        x = image(n, seed=n)
        (got,) = session.run(None, {"image": x.numpy()})
        want = eager(run, x).numpy()
        assert got.shape == (n, 4, 32, 32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("model", ["microsegformer", "resnet"])
def test_the_other_models_export_to_onnx(model, tmp_path, capsys):
    """A transformer (attention, reshapes, interpolation) and torchvision's ResNet-18 on classification data.
    (pt2 is the graph torch.onnx.export translates: the U-Net's test covers its file.)"""
    if model == "resnet":
        from test_swin_phases import write_image_folder

        write_image_folder(tmp_path / "imgs", n=2)
        args = ["model=resnet", "data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_workers=0",
                "trainer.batch_size=4"]
    else:
        args = ["model=microsegformer", "model.embed_dims=[8,16,32]", "model.num_heads=[1,1,2]",
                "model.decoder_dim=16", *SHAPES]
    run_cli(*TRAIN, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    code, printed = export_here(capsys, tmp_path / "run", "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0 and "argmax agrees at 100.00%" in printed, printed
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    if model == "resnet":
        assert config["task"] == "classification" and config["classes"] == ["cat", "dog", "owl"]
        assert config["output"][0]["shape"] == ["batch", 3] and config["parameters"] > 11_000_000
    x = image(2, seed=7)
    import onnxruntime

    (got,) = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"image": x.numpy()})
    want = eager(tmp_path / "run", x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


TWO_INPUTS = """
import torch
from torch import nn


class ImagesAndTabular(nn.Module):
    \"\"\"Like swin_mmoe: forward(images, tabular) -> class logits.\"\"\"

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.fc = nn.Linear(4 + 2, num_classes)

    def forward(self, images, tabular):
        return self.fc(torch.cat([self.conv(images).mean((2, 3)), tabular], 1))
"""


def test_a_file_another_script_wrote_and_a_model_that_cannot_be_traced(tmp_path, capsys, monkeypatch):
    """Their bare state dict with model=custom overrides exports as safetensors; pt2 of a forward(images, tabular)
    fails with exit 1 naming the inputs and the format that works, and leaves --out as it was."""
    (tmp_path / "export_test_nets.py").write_text(TWO_INPUTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from export_test_nets import ImagesAndTabular

    theirs = ImagesAndTabular(4, 3)
    torch.save(theirs.state_dict(), tmp_path / "their.pth")
    overrides = ["model=custom", "model._target_=export_test_nets.ImagesAndTabular", "data.train_size=8",
                 "data.val_size=4", "data.image_size=32"]
    code, printed = export_here(capsys, tmp_path / "their.pth", "--format", "safetensors", "--out", tmp_path / "st",
                                *overrides)
    assert code == 0 and "outputs not compared: forward takes images, tabular" in printed, printed
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "st" / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in theirs.state_dict().items())
    assert json.loads((tmp_path / "st" / "config.json").read_text())["model"]["_target_"] == (
        "export_test_nets.ImagesAndTabular")

    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    for out in (tmp_path / "new", tmp_path / "keep"):
        code, printed = export_here(capsys, tmp_path / "their.pth", "--format", "pt2", "--out", out, *overrides)
        message = " ".join(printed.split())
        assert code == 1 and message.startswith("Error: --format pt2 traces forward(image)"), printed
        assert "takes images, tabular" in message and "--format safetensors" in message, printed
    assert not (tmp_path / "new").exists(), "a failed export created its folder"
    assert [p.name for p in (tmp_path / "keep").iterdir()] == ["notes.txt"]


def test_bad_input_is_one_paragraph_naming_the_value(run, tmp_path, capsys):
    proc = export(run, "--format", "tflite", "--out", tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: --format tflite is unknown: use safetensors"), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().split("\n\n")) == 1
    (tmp_path / "a_file").write_text("")
    cases = {
        (tmp_path / "nowhere", "--format", "onnx", "--out", tmp_path / "o"): "nowhere' is neither a checkpoint file",
        (run, "--format", "onnx", "--out", tmp_path / "a_file"): "a_file is a file, not a folder",
        (run, "--format", "pt2", "--out", tmp_path / "o", "--checkpoint", "newest"): "--checkpoint newest is unknown",
        (run, "--format", "pt2", "--out", tmp_path / "o", "--ema", "yes"): "--ema yes is unknown: use auto",
        (run, "--format", "pt2", "--out", tmp_path / "o", "data.image_size"):
            "data.image_size: overrides are key=value",
    }
    for args, message in cases.items():
        code, printed = export_here(capsys, *args)
        assert code == 2 and printed.startswith("Error: ") and message in " ".join(printed.split()), (args, printed)
    assert not (tmp_path / "o").exists()


def test_onnx_without_the_export_extra_says_how_to_install_it(run, tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.modules['onnxscript'] = None\n"
            "from project.commands.export import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(run), "--format", "onnx", "--out", str(tmp_path / "o")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "needs onnxscript, onnxruntime, which are not installed" in message, message
    assert "pip install -e '.[export]'" in message and not (tmp_path / "o").exists()


def test_compare_allows_the_tolerance_and_near_ties_only():
    from project.commands.export import compare

    want = torch.tensor([[0.0, 1.0], [5.0, 1.0000001], [2.0, -3.0]])[None]  # (batch 1, classes 3, positions 2)
    assert compare(want, want + 5e-6, 1e-4, 1e-5)["close"]
    assert not compare(want, want + 1e-3, 1e-4, 1e-5)["close"]
    swapped = want.clone()
    swapped[0, 1, 0], swapped[0, 2, 0] = 2.0, 5.0  # position 0's clear winner (class 1 by 3.0) changes: counted
    assert compare(want, swapped, 1e-4, 1e-5)["argmax_disagree_clear"] == 1
    tie = want.clone()
    tie[0, 1, 1] = 0.9999999  # classes 0 and 1 of position 1 were a near tie, within tolerance: either may win
    result = compare(want, tie, 1e-4, 1e-5)
    assert result["close"] and result["argmax_agree"] == 1 and result["argmax_disagree_clear"] == 0
    assert result["positions"] == 2


def test_load_model_gives_the_validated_weights_in_eval_mode(run, best):
    from project import load_model

    model, cfg = load_model(run, checkpoint="best")
    assert not model.training and not any(m.training for m in model.modules())
    assert cfg.model == best["config"]["model"] and cfg.model.base_channels == 4  # the run's own config
    state = model.state_dict()
    assert state.keys() == best["ema_state_dict"].keys()
    assert all(torch.equal(state[k], best["ema_state_dict"][k]) for k in state), "not the EMA weights it validated"
    raw, _ = load_model(run / "checkpoints" / "best_model.pth", ema="off")
    assert all(torch.equal(raw.state_dict()[k], best["model_state_dict"][k]) for k in state)
    last, _ = load_model(run, checkpoint="last")
    saved_last = torch.load(run / "checkpoints" / "last.pth")
    assert all(torch.equal(last.state_dict()[k], saved_last["ema_state_dict"][k]) for k in state)


def test_console_script_and_lazy_imports():
    """project-export is installed; `import project` and the export module's start-up import no torch, onnx,
    onnxruntime or safetensors (they come when an export runs)."""
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("project-export") == "project.commands.export:main"
    heavy = ("torch", "onnx", "onnxruntime", "onnxscript", "safetensors")
    code = (f"import sys, project, project.commands.export; from project import load_model; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
