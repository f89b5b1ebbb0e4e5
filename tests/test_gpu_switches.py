"""The GPU switches (issue 18, part 2; Lightning's names): trainer.float32_matmul_precision, trainer.benchmark,
trainer.deterministic, trainer.channels_last. On the CPU, where they mean something there: channels-last trains
to the same results within float tolerance and saves the standard layout, deterministic algorithms train, an op
without a deterministic implementation is a clear error, the switches are recorded (environment.json, the
checkpoint's config) and shown in the change table, bad values are refused."""
import json
import os
import subprocess
import sys

import torch

from conftest import ROOT, TINY, TINY_DATA, assert_resumed, assert_same_state, load, run_cli, tensors, train_tiny

# The default model (a U-Net: 4-D convolutions, BatchNorm, transposed convolutions), CPU-sized.
UNET = [*TINY_DATA, "model=unet", "model.base_channels=4"]
# channels-last on the CPU takes other convolution kernels: after 12 AdamW steps (lr 2e-3) the weights measured
# at most 8.4e-5 apart and the val loss 1e-6; the tolerances leave room for other CPUs
WEIGHT_ATOL, LOSS_RTOL = 1e-3, 1e-4


def environment(run_dir) -> list[dict]:
    return json.loads((run_dir / "environment.json").read_text())


def test_channels_last_trains_within_float_tolerance_and_saves_the_standard_layout(tmp_path):
    run_cli(*UNET, f"hydra.run.dir={tmp_path / 'default'}", cwd=tmp_path)
    cl = ["trainer.channels_last=true", "trainer.save_interval=1", "trainer.keep_last=2"]
    run_cli(*UNET, *cl, f"hydra.run.dir={tmp_path / 'cl'}", cwd=tmp_path)
    ref = load(tmp_path / "default" / "checkpoints" / "final_model.pth")
    got = load(tmp_path / "cl" / "checkpoints" / "final_model.pth")
    assert got["config"]["trainer"]["channels_last"] is True and environment(tmp_path / "cl")[0]["switches"][
        "channels_last"] is True
    for key, value in ref["model_state_dict"].items():
        assert torch.allclose(got["model_state_dict"][key].float(), value.float(), rtol=0, atol=WEIGHT_ATOL), key
    assert abs(got["val_metrics"]["loss"] - ref["val_metrics"]["loss"]) <= LOSS_RTOL * ref["val_metrics"]["loss"]
    # every tensor of every file is in the standard layout: a plain model loads it as it is
    for path in (tmp_path / "cl" / "checkpoints").glob("*.pth"):
        assert all(t.is_contiguous() for t in tensors(load(path))), path
    from project.models import UNet

    plain = UNet(**got["model_args"], base_channels=4)
    plain.load_state_dict(got["model_state_dict"])

    # resume=full with channels-last continues bit for bit (the CPU); a run without it continues the same file
    epoch_1 = tmp_path / "cl" / "checkpoints" / "checkpoint_epoch_1.pth"
    proc = run_cli(*UNET, *cl, "resume=full", f"resume.checkpoint={epoch_1}",
                   f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    resumed = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert_resumed(proc.stdout, epoch_1, load(epoch_1)["global_step"], resumed)  # not a retrain from scratch
    assert_same_state(resumed, got)
    proc = run_cli(*UNET, "trainer.channels_last=false", "trainer.max_epochs=3", "resume=full",
                   f"resume.checkpoint={tmp_path / 'cl'}", f"hydra.run.dir={tmp_path / 'without'}", cwd=tmp_path)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("trainer.channels_last"))
    assert "True" in row and "False" in row and "standard memory layout" in row, row
    without = load(tmp_path / "without" / "checkpoints" / "last.pth")
    assert without["epoch"] == 3
    cl_last = tmp_path / "cl" / "checkpoints" / "last.pth"
    assert_resumed(proc.stdout, cl_last, got["global_step"], without)


def test_channels_last_puts_the_model_and_every_4d_input_in_that_layout(tmp_path):
    """In process, as benchmarks/throughput.py builds a run: the convolution weights are channels-last, and so
    is what the first convolution receives, in training and in the EMA copy."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from project.recipe import setup

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*UNET, "trainer.channels_last=true", "trainer.ema.decay=0.9"])
    run = setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), [], None, tmp_path, {})
    try:
        seen = []
        for model in (run.net, run.state["ema"].module):
            first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
            handle = first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            model(torch.randn(2, 3, 32, 32))  # a standard-layout batch, as the loader gives it
            handle.remove()
        assert len(seen) == 2 and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    finally:
        setup.close_loaders(run)


def test_deterministic_trains_on_the_cpu_and_each_switch_is_recorded_and_shown_on_resume(tmp_path):
    first = tmp_path / "first"
    train_tiny(first, "trainer.max_epochs=1", "trainer.deterministic=true", "trainer.float32_matmul_precision=high",
               cwd=tmp_path, env_extra={"CUBLAS_WORKSPACE_CONFIG": ""})
    (start,) = environment(first)
    assert start["switches"]["deterministic"] is True and start["switches"]["float32_matmul_precision"] == "high"
    assert start["switches"]["torch"] == {"float32_matmul_precision": "high", "cudnn_benchmark": False,
                                          "deterministic_algorithms": True, "deterministic_warn_only": False,
                                          "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    saved = load(first / "checkpoints" / "last.pth")
    assert saved["epoch"] == 1 and saved["config"]["trainer"]["deterministic"] is True

    proc = train_tiny(tmp_path / "second", "trainer.max_epochs=2", "resume=full", f"resume.checkpoint={first}",
                      "trainer.benchmark=true", "trainer.deterministic=warn", "trainer.float32_matmul_precision=null",
                      cwd=tmp_path)
    table = {line.split("|")[0].strip(): line for line in proc.stdout.splitlines() if line.startswith("trainer.")}
    assert "GPU runs are no longer bit-exact on resume" in table["trainer.benchmark"]
    assert "ops without one warn" in table["trainer.deterministic"]
    assert "torch's default (highest)" in table["trainer.float32_matmul_precision"]
    (start,) = environment(tmp_path / "second")
    assert start["switches"]["torch"]["cudnn_benchmark"] is True
    assert start["switches"]["torch"]["deterministic_warn_only"] is True
    assert start["switches"]["torch"]["float32_matmul_precision"] == "highest"
    assert load(tmp_path / "second" / "checkpoints" / "last.pth")["config"]["trainer"]["benchmark"] is True


# A network with an op torch has no deterministic implementation of, in its backward (on a GPU the default models
# meet such ops: the backward of bilinear upsampling); on the CPU `put_` is one.
NETS = '''
import torch
from torch import nn


class PutInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        out = torch.zeros_like(grad).flatten()
        out.put_(torch.arange(out.numel()), grad.flatten())
        return out.view_as(grad)


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x):
        return PutInBackward.apply(self.conv(x))
'''


def test_an_op_without_a_deterministic_implementation_stops_with_a_clear_error(tmp_path):
    (tmp_path / "their_nets.py").write_text(NETS)
    net = [*TINY_DATA, "model=custom", "model._target_=their_nets.Net"]
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    proc = run_cli(*net, "trainer.deterministic=true", f"hydra.run.dir={tmp_path / 'strict'}", cwd=tmp_path,
                   env_extra=env, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in err and "trainer.deterministic=true" in err and "uses put_" in err, err
    assert "trainer.deterministic=warn" in err, err
    proc = run_cli(*net, "trainer.deterministic=warn", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'warn'}",
                   cwd=tmp_path, env_extra=env)
    assert "put_ does not have a deterministic implementation" in proc.stderr  # torch's warning, once
    assert load(tmp_path / "warn" / "checkpoints" / "last.pth")["epoch"] == 1


def test_bad_switch_values_are_refused_before_anything_is_written(tmp_path):
    proc = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'bad'}", "trainer.float32_matmul_precision=low",
                   "trainer.deterministic=sometimes", "trainer.benchmark=2", "trainer.channels_last=yes",
                   cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err, proc.stdout + proc.stderr
    for text in ("trainer.float32_matmul_precision='low' is out of range", "highest, high",
                 "trainer.deterministic='sometimes' is out of range", "warn (warn on ops",
                 "trainer.benchmark=2 is out of range", "trainer.benchmark=true or false",
                 "trainer.channels_last='yes' is out of range", "Nothing was trained or written"):
        assert text in err, f"{text!r} not in {err}"
    assert not (tmp_path / "bad").exists() and not (tmp_path / "outputs").exists()


def test_the_throughput_benchmark_takes_the_switches_on_the_cpu(tmp_path):
    bench = [sys.executable, str(ROOT / "benchmarks" / "throughput.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    help_text = subprocess.run([*bench, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert "--float32-matmul-precision" in help_text and "--channels-last" in help_text
    proc = subprocess.run([*bench, "--epochs", "2", "--models", "microsegformer", "--modes", "32", "--device", "cpu",
                           "--image-size", "32", "--train-size", "16", "--batch-size", "8", "--channels-last",
                           "--float32-matmul-precision", "high", "--cudnn-benchmark"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "channels-last, float32 matmul high, cuDNN benchmark" in proc.stdout, proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("| microsegformer | 32 |")], proc.stdout
