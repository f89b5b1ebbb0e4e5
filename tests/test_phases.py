"""Phase schedules: each phase's settings apply, resume continues the right phase bit for bit, and a resume
that would reinterpret finished epochs is refused."""

import pytest

from conftest import assert_resumed, assert_same_state, load, run_cli, train_tiny, training_rows

TWO_STAGE = ["schedule=two_stage_lr", "schedule.explore_epochs=2", "trainer.max_epochs=4", "scheduler=none"]


def rows(run_dir):
    return training_rows(run_dir)


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two_stage")
    train_tiny(cwd / "run", *TWO_STAGE, "trainer.save_interval=1", "trainer.keep_last=10", cwd=cwd)
    return cwd / "run"


def test_two_stage_lr_applies_each_phases_lr(two_stage):
    got = [(r["phase"], float(r["lr"])) for r in rows(two_stage)]
    assert got == [("Explore (high LR)", 2e-3)] * 2 + [("Refine (low LR)", 2e-4)] * 2
    files = {p.name for p in (two_stage / "checkpoints").iterdir()}
    assert {"explore_checkpoint.pth", "refine_checkpoint.pth", "checkpoint_epoch_2.pth"} <= files
    log = (two_stage / "training.log").read_text()
    assert "Training plan:" in log and "2. Refine (low LR): epochs 3-4" in log
    assert "state of 101/101 parameters kept" in log  # Adam moments carried into the new phase's optimizer
    final = load(two_stage / "checkpoints" / "final_model.pth")
    assert final["phase"] == "Refine (low LR)" and final["phase_index"] == 1
    assert [g["lr"] for g in final["optimizer_state_dict"]["param_groups"]] == [2e-4]


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_full_resume_in_either_phase_is_bit_exact(two_stage, tmp_path, stop_after):
    """Continue from the end of epoch 1 (explore), 2 (at the switch) or 3 (refine) of an identical run:
    resume=full must end with the same weights as the run that never stopped."""
    ckpt = two_stage / "checkpoints" / f"checkpoint_epoch_{stop_after}.pth"
    proc = train_tiny(tmp_path / "resumed", *TWO_STAGE, "resume=full", f"resume.checkpoint={ckpt}", cwd=tmp_path)
    expected_phase = "Explore (high LR)" if stop_after < 2 else "Refine (low LR)"
    assert [r["phase"] for r in rows(tmp_path / "resumed")][stop_after] == expected_phase
    a = load(two_stage / "checkpoints" / "final_model.pth")
    b = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert_same_state(a, b)
    assert_resumed(proc.stdout, ckpt, load(ckpt)["global_step"], b)
    assert f"epochs {stop_after} -> 4" in proc.stdout  # it trained only the epochs after the checkpoint
    assert [float(r["lr"]) for r in rows(tmp_path / "resumed")] == [float(r["lr"]) for r in rows(two_stage)]


def test_full_resume_refuses_a_schedule_that_reinterprets_finished_epochs(two_stage, tmp_path):
    ckpt = two_stage / "checkpoints" / "checkpoint_epoch_2.pth"
    proc = run_cli(*[a for a in TWO_STAGE if "explore_epochs" not in a], "schedule.explore_epochs=1",
                   "trainer.max_epochs=6", "data.train_size=48", "data.val_size=16", "data.image_size=32",
                   "trainer.batch_size=8", "model=microsegformer", "model.embed_dims=[8,16,32]",
                   "model.num_heads=[1,1,2]", "model.decoder_dim=16", "model.dropout=0.1", "trainer.num_threads=1", "resume=full",
                   f"resume.checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "reinterpret finished epochs" in err and "was 2" in err and "is 1 now" in err
    assert "resume=reset_optimizer" in err
    # extending the last phase is fine
    train_tiny(tmp_path / "longer", *TWO_STAGE[:-2], "trainer.max_epochs=5", "scheduler=none", "resume=full",
               f"resume.checkpoint={two_stage}", cwd=tmp_path)
    assert [r["epoch"] for r in rows(tmp_path / "longer")] == ["1", "2", "3", "4", "5"]


def test_reset_optimizer_matching_report_and_ignore_keys(two_stage, tmp_path):
    """A new decoder size: refused with the mismatched keys named, accepted once they are ignored on purpose."""
    args = ["resume=reset_optimizer", f"resume.checkpoint={two_stage}", "model.decoder_dim=24"]
    proc = train_tiny(tmp_path / "refused", *args, cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "shape-mismatched" in err and "decoder.project.0.weight" in err
    assert "resume.ignore_keys" in err
    out = train_tiny(tmp_path / "accepted", *args, "trainer.max_epochs=1", "resume.ignore_keys=[decoder.*]",
                     cwd=tmp_path).stdout
    assert "Parameter matching" in out and "ignored by resume.ignore_keys" in out
    parent = load(two_stage / "checkpoints" / "best_model.pth")["model_state_dict"]
    # encoder weights came from the parent: one step of training moves them only a little
    child = load(tmp_path / "accepted" / "checkpoints" / "final_model.pth")["model_state_dict"]
    w = "encoder.0.embed.proj.weight"
    assert (child[w] - parent[w]).abs().max() < 0.05 < (parent[w]).abs().max()


def test_retention_keeps_the_checkpoint_that_ends_a_phase(tmp_path):
    train_tiny(tmp_path / "run", *TWO_STAGE, "trainer.save_interval=1", "trainer.keep_last=1", cwd=tmp_path)
    periodic = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint_epoch_*.pth"))
    assert periodic == ["checkpoint_epoch_2.pth", "checkpoint_epoch_4.pth"]  # 2 ends "explore", 4 is the newest
