"""Every user mistake: a clear message naming the bad value and the fix, exit code != 0, nothing touched."""
import hashlib
import os
import pickle
import shutil

import pytest
import torch

from conftest import TINY, TINY_DATA, run_cli


def snapshot(root):
    """Every file under root (checkpoints, logs, metrics, records), by content and modification time."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(parent_run, tmp_path):
    """A copy of a finished run under tmp_path/outputs, so `latest` finds it and we can check it stays intact."""
    run = tmp_path / "outputs" / "parent"
    shutil.copytree(parent_run, run)
    return tmp_path, run


def fails(cwd, *overrides, expect=(), code=2, base=TINY):
    before = snapshot(cwd)
    proc = run_cli(*base, f"hydra.run.dir={cwd / 'outputs' / 'new'}", *overrides, cwd=cwd, check=False)
    err = " ".join(proc.stderr.split())  # the message is wrapped for the terminal
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{err}"
    assert "Traceback" not in err, err
    for text in expect:
        assert text in err, f"{text!r} not in:\n{err}"
    assert snapshot(cwd) == before, "a file was written, changed or removed"
    assert not (cwd / "outputs" / "new").exists(), "a refused run left its run dir behind"
    return err


def test_no_checkpoint_for_latest(tmp_path):
    fails(tmp_path, "resume=full", expect=["resume.checkpoint=latest found no run", "python run.py"])


def test_path_does_not_exist(workspace):
    cwd, _ = workspace
    fails(cwd, "resume=full", f"resume.checkpoint={cwd}/nope.pth", expect=["nope.pth", "does not exist"])


def test_truncated_checkpoint(workspace):
    cwd, run = workspace
    bad = cwd / "truncated.pth"
    data = (run / "checkpoints" / "last.pth").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    fails(cwd, "resume=full", f"resume.checkpoint={bad}", expect=["truncated.pth", "truncated or corrupt"])


def test_corrupt_checkpoint(workspace):
    cwd, _ = workspace
    bad = cwd / "corrupt.pth"
    bad.write_bytes(os.urandom(4096))
    fails(cwd, "resume=reset_optimizer", f"resume.checkpoint={bad}", expect=["corrupt.pth", "truncated or corrupt"])


def test_not_our_checkpoint(workspace):
    cwd, _ = workspace
    foreign = cwd / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)  # a bare state dict of another network
    fails(cwd, "resume=full", f"resume.checkpoint={foreign}", expect=["foreign.pth", "has none",
                                                                       "resume=reset_optimizer"])
    fails(cwd, "resume=reset_optimizer", f"resume.checkpoint={foreign}",
          expect=["foreign.pth", "do not fit the model", "unexpected 1 (conv.weight)"])
    fails(cwd, "resume=reset_optimizer", f"resume.checkpoint={foreign}", "resume.weights_key=ema",
          expect=["resume.weights_key='ema'", "no state dict under that key"])


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running(workspace):
    cwd, _ = workspace
    marker = cwd / "pwned"
    evil = cwd / "evil.pth"
    torch.save({"format": "project-checkpoint-v1", "payload": Exploit(marker)}, evil)
    fails(cwd, "resume=full", f"resume.checkpoint={evil}", expect=["evil.pth", "Refused to load", "system",
                                                                    "weights_only=False"])  # the re-save line
    raw = cwd / "raw_pickle.pth"
    raw.write_bytes(pickle.dumps({"payload": Exploit(marker)}))
    fails(cwd, "resume=full", f"resume.checkpoint={raw}", expect=["raw_pickle.pth", "nothing in it was executed"])
    assert not marker.exists(), "the pickle's code ran"


def test_architecture_mismatch_full(workspace):
    cwd, _ = workspace
    fails(cwd, "resume=full", "trainer.max_epochs=4", "model=unet", base=TINY_DATA,
          expect=["MicroSegFormer", "UNet", "resume.checkpoint=latest picked it", "resume.checkpoint=<run dir or .pth>"])
    fails(cwd, "resume=full", "trainer.max_epochs=4", "model.decoder_dim=32",
          expect=["architecture changed", "model.decoder_dim: 16 -> 32", "resume=reset_optimizer"])


def test_architecture_mismatch_reset_optimizer_lists_keys(workspace):
    cwd, _ = workspace
    err = fails(cwd, "resume=reset_optimizer", "model.embed_dims=[8,16,48]",
                expect=["do not fit the model", "shape-mismatched", "unexpected 0", "missing 0"])
    assert "encoder.2" in err


def test_unknown_config_group_option(tmp_path):
    proc = run_cli("model=resnet9000", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "model/resnet9000" in proc.stderr and "microsegformer" in proc.stderr  # names the options
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pth"))


@pytest.mark.parametrize("override, names", [
    ("model.dropout=1.5", "model.dropout=1.5"),
    ("model.dropout=-0.1", "model.dropout=-0.1"),
    ("optimizer.lr=-0.001", "optimizer.lr=-0.001"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    ("trainer.gradient_clip_val=-1.0", "trainer.gradient_clip_val=-1.0"),
    ("trainer.ema.decay=1.5", "trainer.ema.decay=1.5"),
    ("trainer.ema.decay=0", "trainer.ema.decay=0"),
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite='ignore'"),
])
def test_out_of_range_values(workspace, override, names):
    cwd, _ = workspace
    fails(cwd, override, expect=[names, "out of range", "Nothing was trained"])


def test_compile_that_fails_is_a_clear_error(workspace):
    """inductor without a working C++ compiler (the one test that compiles with inductor): the compile error
    surfaces at the first forward and is reported as bad input, before anything is saved."""
    cwd, _ = workspace
    before = snapshot(cwd)
    proc = run_cli(*TINY, "trainer.compile=true", f"hydra.run.dir={cwd / 'outputs' / 'new'}", cwd=cwd, check=False,
                   env_extra={"CXX": str(cwd / "no-such-compiler")})
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "trainer.compile=true failed" in err and "'inductor'" in err and "trainer.compile=false" in err
    # it failed after the run had started (its run dir stays, with its log), but before any checkpoint
    new = cwd / "outputs" / "new"
    assert {k: v for k, v in snapshot(cwd).items() if not k.startswith(str(new))} == before
    assert not list(new.rglob("*.pth")) and "trainer.compile=true failed" in (new / "training.log").read_text()


def test_full_resume_of_a_finished_run(workspace):
    cwd, run = workspace
    fails(cwd, "resume=full", f"resume.checkpoint={run}",
          expect=["already finished 2 of trainer.max_epochs=2", "trainer.max_epochs="])


def test_cuda_asked_for_but_absent(workspace):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    cwd, _ = workspace
    fails(cwd, "trainer.device=cuda", expect=["trainer.device=cuda", "trainer.device=auto"])


@pytest.mark.parametrize("override, expect", [
    ("+trainer.max_epoch=3", ["+trainer.max_epoch=3", "no key 'max_epoch'", "did you mean trainer.max_epochs?"]),
    ("+optimizer.weight_decai=0.1", ["+optimizer.weight_decai=0.1", "torch.optim.AdamW", "no key 'weight_decai'",
                                     "did you mean optimizer.weight_decay?"]),
    ("+data.val_fration=0.2", ["+data.val_fration=0.2", "no key 'val_fration'", "did you mean data.val_fraction?"]),
    ("optimizer.lr=abc", ["optimizer.lr='abc' is not a number", "optimizer.lr=4e-4"]),
    ("trainer.log_every_n_steps=0", ["trainer.log_every_n_steps=0 is out of range", "every N >= 1"]),
    ("data.num_workers=-1", ["data.num_workers=-1 is out of range", "data.num_workers=2"]),
    ("scheduler.warmup_epochs=-2", ["scheduler.warmup_epochs=-2 is out of range", "scheduler.warmup_epochs=1"]),
])
def test_a_mistyped_key_or_a_bad_value_is_refused_before_the_run_dir_is_made(tmp_path, override, expect):
    """Issue 25: keys the config and the component do not have, and values of the wrong type or range, end in one
    paragraph with the nearest valid name (exit 2, no run dir left), never a traceback or a silent default."""
    data = (["data=seg_folder", f"data.root={tmp_path / 'faces'}", "data.val_fraction=null"]
            if override.lstrip("+").startswith("data.") else [])
    fails(tmp_path, *data, override, expect=[*expect, "Nothing was trained or written"],
          base=TINY if not data else TINY_DATA[3:])
