"""What GPU users turn on (mixed precision, accumulation, clipping, EMA, compile, the NaN guard), each resumed
bit for bit, in real processes (signals, exit codes), on the CPU."""
import hashlib
import shutil

import torch

from conftest import (ROOT, TINY, assert_continued_from, assert_resumed, assert_same, assert_same_state, load, run_cli,
                      stop_with_sigterm, tensors, train_tiny, training_rows)

FEATURES = ["trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=3", "trainer.gradient_clip_val=1.0",
            "trainer.ema.decay=0.9"]
BATCHES = 25  # data.train_size=200 / batch 8: eight windows of 3 and a short last window of 1


def rows(run_dir):
    return training_rows(run_dir)


def test_sigterm_inside_an_accumulation_window_resumes_bit_exact(tmp_path):
    """bf16-mixed + accumulation 3 + clipping + EMA: stopped mid-epoch, resumed, equal to a run never stopped:
    weights, EMA weights, every optimizer tensor, scheduler, RNG, and every row of metrics.csv."""
    args = [*FEATURES, "trainer.max_epochs=3", "data.train_size=200"]
    train_tiny(tmp_path / "ref", *args, cwd=tmp_path)
    stop_with_sigterm(tmp_path / "stopped", *TINY, *args, cwd=tmp_path)
    stopped = load(tmp_path / "stopped" / "checkpoints" / "last.pth")
    b = stopped["batch_in_epoch"]
    assert stopped["epoch"] < 3 and 0 < b and (b % 3 == 0 or b == BATCHES), f"saved at batch {b}: not a window edge"
    assert stopped["global_step"] == stopped["epoch"] * 9 + (b + 2) // 3  # optimizer steps, not batches

    resumed = train_tiny(tmp_path / "resumed", *args, "resume=full", f"resume.checkpoint={tmp_path / 'stopped'}",
                         cwd=tmp_path)
    ref = load(tmp_path / "ref" / "checkpoints" / "final_model.pth")
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert "ema_state_dict" in ref and ref["validated_weights"] == "ema"
    assert_resumed(resumed.stdout, tmp_path / "stopped" / "checkpoints" / "last.pth", stopped["global_step"], got)
    assert_same_state(got, ref)
    assert rows(tmp_path / "resumed") == rows(tmp_path / "ref")  # the stopped epoch's loss and grad norm too
    assert float(rows(tmp_path / "ref")[0]["train_grad_norm"]) > 0
    # the EMA copy loads into the model as it is (no `module.` prefix), and is not the raw weights
    assert ref["ema_state_dict"].keys() == ref["model_state_dict"].keys()
    assert not all(torch.equal(ref["ema_state_dict"][k], ref["model_state_dict"][k]) for k in ref["ema_state_dict"])


SWIN = ["+experiment=swin_admoe", "model=swin_mmoe", "model.embed_dim=8", "data.image_size=32",
        "data.train_size=32", "data.val_size=16", "trainer.batch_size=8", "trainer.num_threads=1",
        "schedule.pretrain_epochs=2", "trainer.max_epochs=4", "trainer.save_interval=1", "trainer.keep_last=10",
        "optimizer.lr=1e-3", "logger=csv", *FEATURES]


def test_resume_across_the_pretrain_finetune_switch_with_ema(tmp_path):
    """SimMIM pretraining, then fine-tuning without the decoder (dropped from the EMA copy too): resume=full from
    the checkpoint at the switch ends equal to the uninterrupted run, EMA included."""
    run_cli(*SWIN, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    ref = load(tmp_path / "ref" / "checkpoints" / "final_model.pth")
    assert ref["decoder_removed"] and not [k for k in ref["ema_state_dict"] if k.startswith("decoder.")]
    switch = tmp_path / "ref" / "checkpoints" / "checkpoint_epoch_2.pth"
    assert [k for k in load(switch)["ema_state_dict"] if k.startswith("decoder.")]
    proc = run_cli(*SWIN, "resume=full", f"resume.checkpoint={switch}", f"hydra.run.dir={tmp_path / 'resumed'}",
                   cwd=tmp_path)
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert_resumed(proc.stdout, switch, load(switch)["global_step"], got, epoch=2, batch=0)
    assert_same_state(got, ref)


def test_16_mixed_skips_overflowing_steps_and_resumes_the_scaler(tmp_path):
    """A scale far too large for fp16 gradients: the first steps overflow, are skipped and counted, the scale
    backs off; scale and growth tracker continue exactly after a resume."""
    args = ["trainer.precision=16-mixed", "trainer.grad_scaler.init_scale=1e6",
            "trainer.grad_scaler.growth_interval=3", "trainer.max_epochs=3", "trainer.save_interval=1",
            "trainer.keep_last=5"]
    train_tiny(tmp_path / "ref", *args, cwd=tmp_path)
    first = load(tmp_path / "ref" / "checkpoints" / "checkpoint_epoch_1.pth")
    skipped = [int(float(r.get("train_skipped_steps") or 0)) for r in rows(tmp_path / "ref")]
    assert skipped[0] > 0, rows(tmp_path / "ref")
    assert first["scaler_state_dict"]["scale"] < 1e6 and first["train_meter"]["skipped_steps"] == skipped[0]

    ckpt = tmp_path / "ref" / "checkpoints" / "checkpoint_epoch_1.pth"
    proc = train_tiny(tmp_path / "resumed", *args, "resume=full", f"resume.checkpoint={ckpt}", cwd=tmp_path)
    ref = load(tmp_path / "ref" / "checkpoints" / "final_model.pth")
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert set(ref["scaler_state_dict"]) >= {"scale", "_growth_tracker"}
    assert_resumed(proc.stdout, ckpt, first["global_step"], got, epoch=1, batch=0)
    assert_same_state(got, ref)  # scaler_state_dict included


def test_compiled_checkpoints_resume_in_eager_mode_and_back(tmp_path):
    compiled = ["trainer.compile=true", "trainer.compile_backend=aot_eager"]
    train_tiny(tmp_path / "compiled", *compiled, "trainer.max_epochs=1", cwd=tmp_path)
    ckpt = load(tmp_path / "compiled" / "checkpoints" / "last.pth")
    assert ckpt["compiled"] and not [k for k in ckpt["model_state_dict"] if "_orig_mod" in k]
    # the continuations at a small LR, so their weights show they went on from the file's (assert_continued_from):
    # a restore that dropped the weights behind the `_orig_mod.` names would start from the initial ones
    small = ["scheduler=none", "optimizer.lr=1e-5"]
    eager = train_tiny(tmp_path / "eager", "trainer.compile=false", *small, "resume=full",
                       f"resume.checkpoint={tmp_path / 'compiled'}", cwd=tmp_path)
    assert "trainer.compile" in eager.stdout  # the change table shows the switch
    first = tmp_path / "compiled" / "checkpoints" / "last.pth"
    ckpt = load(tmp_path / "eager" / "checkpoints" / "last.pth")
    assert ckpt["epoch"] == 2 and not ckpt["compiled"]
    assert_resumed(eager.stdout, first, load(first)["global_step"], ckpt, epoch=1, batch=0)
    assert_continued_from(ckpt, load(first), lr=1e-5)
    again = train_tiny(tmp_path / "again", *compiled, *small, "trainer.max_epochs=3", "resume=full",
                       f"resume.checkpoint={tmp_path / 'eager'}", cwd=tmp_path)
    second = tmp_path / "eager" / "checkpoints" / "last.pth"
    ckpt = load(tmp_path / "again" / "checkpoints" / "last.pth")
    assert ckpt["epoch"] == 3 and ckpt["compiled"] and not [k for k in ckpt["model_state_dict"] if "_orig_mod" in k]
    assert_resumed(again.stdout, second, load(second)["global_step"], ckpt, epoch=2, batch=0)
    assert_continued_from(ckpt, load(second), lr=1e-5)


def all_finite(run_dir):
    files = sorted((run_dir / "checkpoints").glob("*.pth"))
    assert files
    return all(torch.isfinite(t.float()).all() for f in files for t in tensors(load(f)) if t.is_floating_point())


def test_a_diverging_continuation_stops_with_exit_3_and_saves_nothing_after(tmp_path):
    train_tiny(tmp_path / "first", "trainer.max_epochs=1", cwd=tmp_path)
    last = tmp_path / "first" / "checkpoints" / "last.pth"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    proc = train_tiny(tmp_path / "second", "trainer.max_epochs=3", "resume=full",
                      f"resume.checkpoint={tmp_path / 'first'}", "optimizer.lr=1e12", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in err and "NaN or inf" in err and "epoch 2" in err
    assert f"The last good checkpoint is {last} (epoch 1)" in err and "optimizer.lr=1e+11" in err
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert all_finite(tmp_path / "first")
    second = tmp_path / "second" / "checkpoints"
    assert not second.exists() or not list(second.glob("*.pth")) or all_finite(tmp_path / "second")


def test_on_nonfinite_skip_drops_the_steps_then_gives_up(tmp_path):
    proc = train_tiny(tmp_path / "skip", "trainer.max_epochs=2", "optimizer.lr=1e12", "trainer.on_nonfinite=skip",
                      "trainer.max_nonfinite_skips=3", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 3 and "more than trainer.max_nonfinite_skips=3" in err, proc.stdout + err
    assert proc.stdout.count("update skipped") == 4  # three allowed, the fourth ends the run
    assert not list((tmp_path / "skip").rglob("*.pth"))  # it never finished an epoch


V1_FIXTURE = ROOT / "tests" / "fixtures" / "v1_last_mid_epoch_2.ckpt"


def test_a_v1_checkpoint_resumes_and_matches_its_uninterrupted_run(tmp_path):
    """tests/fixtures: a last.pth written by main before the v2 format, stopped mid-epoch 2 of 3, continued to the
    end and held against the same command run without a stop. Both files were made on another machine: the
    position, the schedule and the bests must match exactly, the weights closely; the CPU's math libraries (MKL,
    oneDNN) pick their kernels by processor, so the same steps round differently on another CPU (an AMD EPYC VM
    ends up to 5e-3 away). Bit for bit, on this machine: the next test."""
    fixture = tmp_path / "old" / "last.pth"
    fixture.parent.mkdir()
    shutil.copy(V1_FIXTURE, fixture)
    assert torch.load(fixture)["format"] == "project-checkpoint-v1"
    # its saved overrides (data, model and trainer sizes) decide the config, not today's defaults
    proc = run_cli("resume=full", f"resume.checkpoint={fixture}", f"hydra.run.dir={tmp_path / 'resumed'}",
                   cwd=tmp_path)
    ref = torch.load(ROOT / "tests" / "fixtures" / "v1_reference_final.ckpt")
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert got["format"] == "project-checkpoint-v2" and got["epoch"] == 3
    for key in ("scheduler_state_dict", "global_step", "best_f_score", "best_epoch"):
        assert_same(got[key], ref[key], key)
    for name, weight in ref["model_state_dict"].items():
        assert torch.allclose(got["model_state_dict"][name], weight, rtol=0, atol=2e-2), name
    steps = [[s["step"] for s in c["optimizer_state_dict"]["state"].values()] for c in (got, ref)]
    assert steps[0] == steps[1]
    assert_resumed(proc.stdout, fixture, 82, got, epoch=1, batch=32)  # "epochs 1 -> 3 (epoch 2 from batch 32)"


def as_v1(state: dict, v1: dict) -> dict:
    """A v2 checkpoint in the v1 layout, with the keys the real v1 file `v1` holds: the inverse of
    project.checkpoints.files.upgrade (parameter names beside the groups, the epoch's train meter and loss sum
    as two keys, no scaler)."""
    optimizer, meter = state["optimizer_state_dict"], state["train_meter"]
    groups = [{k: v for k, v in group.items() if k != "param_names"} for group in optimizer["param_groups"]]
    old = {key: state[key] for key in v1 if key in state}
    old.update(format="project-checkpoint-v1", optimizer_state_dict={**optimizer, "param_groups": groups},
               optimizer_param_names=[n for group in optimizer["param_groups"] for n in group["param_names"]],
               epoch_meter=meter["meter"], epoch_loss_sum=float(meter["loss_sum"]))
    assert old.keys() == v1.keys(), sorted(set(old) ^ set(v1))
    return old


def test_a_v1_checkpoint_made_here_resumes_bit_exact(tmp_path):
    """A mid-epoch last.pth of this machine rewritten in the v1 layout (its keys those of the real v1 file),
    continued: equal to the run never stopped, every weight, optimizer tensor, RNG state and counter."""
    args = ["trainer.max_epochs=3", "data.train_size=200"]
    train_tiny(tmp_path / "ref", *args, cwd=tmp_path)
    stop_with_sigterm(tmp_path / "stopped", *TINY, *args, cwd=tmp_path)
    stopped = load(tmp_path / "stopped" / "checkpoints" / "last.pth")
    assert 0 < stopped["batch_in_epoch"] < BATCHES, "stopped at an epoch's edge: no position to restore"
    old = tmp_path / "old" / "last.pth"
    old.parent.mkdir()
    torch.save(as_v1(stopped, torch.load(V1_FIXTURE)), old)
    proc = train_tiny(tmp_path / "resumed", *args, "resume=full", f"resume.checkpoint={old}", cwd=tmp_path)
    got = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert got["format"] == "project-checkpoint-v2"
    assert_resumed(proc.stdout, old, stopped["global_step"], got)
    assert_same_state(got, load(tmp_path / "ref" / "checkpoints" / "final_model.pth"))
