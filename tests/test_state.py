"""The one training state and the resume decision, in-process: every registered entry round-trips through a
checkpoint file, each resume mode decides what it should, v1 files upgrade. (The real-process tests on top of
these are test_resume.py, test_phases.py, test_gpu_features.py and test_kill_resume.py.)"""
import io
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT, TINY, assert_same
from project import resume, state
from project.checkpoints import files as checkpoint
from project.recipe import epoch_end, loop, messages, setup
from project.recipe.train import train
from project.errors import UserError
from project.runtime import StopRequest

FEATURES = ["trainer.precision=16-mixed", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0",
            "trainer.ema.decay=0.9"]


@pytest.fixture(scope="module")
def config():
    """compose(*overrides): the config run.py would compose, TINY sizes first."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=[*TINY, *overrides])


def build(cfg, run_dir):
    return setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), [], None, run_dir, {})


def train_one_epoch(run):
    """The loop's epoch: train, validate, record, save (checkpoints under the run's dir)."""
    messages.announce(run)  # makes the run dir
    run.stop = StopRequest()
    try:
        loop.train_epoch(run, 0)
        epoch_end.end_epoch(run, 0)
        run.writer.wait()
    finally:
        run.stop.close()


def through_a_file(ckpt: dict) -> dict:
    """What torch.load(path) gives back (weights_only=True, torch's default)."""
    buffer = io.BytesIO()
    torch.save(checkpoint.snapshot(ckpt), buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_every_state_entry_round_trips(config, tmp_path):
    """Save -> build fresh -> load -> the same state dicts, for every entry in the registry (a new entry is
    covered without a new test). Each entry must have changed by training, so a load that did nothing fails."""
    cfg = config(*FEATURES)
    run = build(cfg, tmp_path / "a")
    train_one_epoch(run)
    saved = through_a_file({"format": checkpoint.FORMAT, **state.state_dicts(run.state)})
    assert set(run.state) == state.RESTORES["full"]  # every entry is restored by resume=full

    fresh = build(cfg, tmp_path / "b")
    before = state.state_dicts(fresh.state)
    for name, obj in fresh.state.items():
        if name != "tracker":  # logger=csv keeps no state (W&B's is tested below)
            with pytest.raises(AssertionError, match="differs|!=|keys|lengths"):  # {name} changed in training
                assert_same(state.saved_entry(before, name, obj), state.saved_entry(saved, name, obj), name)
    assert state.load_state_dicts(fresh.state, saved, state.RESTORES["full"]) == []
    assert_same(through_a_file(state.state_dicts(fresh.state)), {k: v for k, v in saved.items() if k != "format"})


def test_the_wandb_tracker_entry_round_trips(tmp_path):
    from project.loggers import WandbLogger

    first, second = WandbLogger(tmp_path / "a", {}), WandbLogger(tmp_path / "b", {})
    assert first.state_dict() != second.state_dict()
    second.load_state_dict(first.state_dict())  # before start(): W&B takes the id at init
    assert second.state_dict() == first.state_dict() and second.init_args["allow_val_change"]


def test_progress_keeps_todays_flat_layout():
    progress = state.Progress(epoch=3, global_step=12, bad_epochs=2, phase_stopped=True)
    flat = state.state_dicts({"progress": progress})
    assert flat["epoch"] == 3 and flat["global_step"] == 12
    assert flat["early_stopping"] == {"bad_epochs": 2, "stopped": True}
    again = state.Progress()
    again.load_state_dict(flat)
    assert again == progress


def test_ema_state_loads_into_the_model_as_it_is(config, tmp_path):
    run = build(config(*FEATURES), tmp_path / "a")
    train_one_epoch(run)
    ckpt = state.state_dicts(run.state)
    model = build(config(*FEATURES), tmp_path / "b").model
    model.load_state_dict(ckpt["ema_state_dict"])  # strict: the model's own key names, nothing else
    assert ckpt["ema_updates"] == run.state["progress"].global_step > 0


@pytest.fixture(scope="module")
def finished_run(config, tmp_path_factory):
    """A 2-epoch tiny run trained in-process, as `outputs/parent` of a fresh working dir."""
    cwd = tmp_path_factory.mktemp("decide")
    run_dir = cwd / "outputs" / "parent"
    # as run.py passes them: the overrides record how the config was composed (logger=csv), which is what lets a
    # continuation accept the file's logger target (project/checkpoints/trust.py)
    train(config(), run_dir, [cwd / "outputs"], {"overrides": list(TINY), "choices": {}})
    return run_dir


def decide(cfg, run_dir, search_dirs):
    return resume.decide(cfg, run_dir, search_dirs, typed=None)


def test_decision_for_each_mode(config, finished_run, tmp_path):
    outputs = [finished_run.parent]
    assert decide(config(), tmp_path / "new", outputs) is None  # resume=none

    reset = decide(config("resume=reset_optimizer", "model.dropout=0.25"), tmp_path / "new", outputs)
    assert reset.mode == "reset_optimizer" and reset.path == finished_run / "checkpoints" / "best_model.pth"
    assert reset.restores == {"model"} and reset.phase == (0, 0)
    assert reset.changes == {"model.dropout": (0.1, 0.25)} and not reset.lr_from_config

    full = decide(config("resume=full", "trainer.max_epochs=4", "optimizer.lr=1e-4"), tmp_path / "new", outputs)
    assert full.mode == "full" and full.path == finished_run / "checkpoints" / "last.pth"
    assert full.restores == state.RESTORES["full"] and full.lr_from_config
    assert full.lineage_entry["epoch"] == 2 and full.lineage_entry["global_step"] == 12

    with pytest.raises(UserError, match="already finished 2 of trainer.max_epochs=2"):
        decide(config("resume=full"), tmp_path / "new", outputs)
    with pytest.raises(UserError, match="architecture changed"):
        decide(config("resume=full", "trainer.max_epochs=4", "model.decoder_dim=24"), tmp_path / "new", outputs)


def test_a_run_dir_with_its_own_last_checkpoint_continues_itself(config, finished_run, tmp_path):
    own = tmp_path / "own"
    shutil.copytree(finished_run, own)
    plan = decide(config("trainer.max_epochs=3"), own, [])  # resume=none, but the dir holds last.pth
    assert plan.mode == "full" and plan.is_own and not plan.finished
    assert decide(config(), own, []).finished  # a requeued job after its last save: nothing to do


def test_override_merging():
    saved = ["model.dropout=0.2", "model.embed_dims=[8,16,32]", "resume=reset_optimizer", "trainer.max_epochs=4"]
    typed = ["resume=full", "trainer.max_epochs=8", "model=unet"]
    assert resume.merge_overrides(saved, typed) == ["trainer.max_epochs=8", "resume=full", "model=unet"]
    assert resume.merge_overrides(saved[:1], ["+experiment=x"]) == ["model.dropout=0.2", "+experiment=x"]


def test_resume_full_keeps_the_saved_values_over_defaults_changed_since(config, finished_run):
    """A run continued with resume=full keeps its own values where today's defaults differ (here: a run saved
    before checkpoints recorded their group choices, when the default model was microsegformer and the default
    lr 8e-4); what is typed now wins, interpolations follow it, keys added since get today's default."""
    saved = checkpoint.load(finished_run / "checkpoints" / "last.pth")
    saved.pop("choices")
    saved["overrides"] = [o for o in saved["overrides"] if o != "model=microsegformer"]  # it was the default then
    saved["config"]["optimizer"]["lr"] = 8e-4
    del saved["config"]["data"]["task"]
    cfg, overrides, choices = resume.recompose(saved, ["resume=full", "trainer.max_epochs=5"])
    assert cfg.model._target_ == "project.models.MicroSegFormer" and cfg.model.embed_dims == [8, 16, 32]
    assert cfg.optimizer.lr == 8e-4 and cfg.trainer.max_epochs == 5 and cfg.scheduler.max_epochs == 5
    assert cfg.data.task == "segmentation" and cfg.resume.mode == "full"
    assert choices["model"] == "microsegformer" and "trainer.max_epochs=5" in overrides
    # with the choices recorded, a group chosen now replaces the saved one
    saved["choices"] = {"model": "microsegformer", "optimizer": "adamw"}
    cfg, _, choices = resume.recompose(saved, ["resume=full", "optimizer=sgd"])
    assert cfg.optimizer._target_ == "torch.optim.SGD" and choices["optimizer"] == "sgd"


def test_reset_optimizer_starts_from_the_weights_that_were_validated():
    raw, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert resume.validated_weights({"model_state_dict": raw, "ema_state_dict": ema,
                                     "validated_weights": "ema"}) == ("ema", ema)
    assert resume.validated_weights({"model_state_dict": raw, "ema_state_dict": ema,
                                     "validated_weights": "model"}) == ("model", raw)
    assert resume.validated_weights({"model_state_dict": raw}) == ("model", raw)  # v1 files, EMA off


def test_a_v1_file_loads_in_the_v2_layout(config, tmp_path):
    fixture = tmp_path / "last.pth"
    shutil.copy(ROOT / "tests" / "fixtures" / "v1_last_mid_epoch_2.ckpt", fixture)
    old = checkpoint.load(fixture)
    assert old["format"] == checkpoint.FORMAT and "optimizer_param_names" not in old
    names = old["optimizer_state_dict"]["param_groups"][0]["param_names"]
    assert names[0] == "encoder.0.embed.proj.weight" and old["train_meter"]["loss_sum"].dtype == torch.float64
    run = build(config(*old["overrides"]), tmp_path / "run")  # as resume=full recomposes it
    assert state.load_state_dicts(run.state, old, state.RESTORES["full"]) == []  # (no scaler: 32-bit, as in v1)
    assert run.state["progress"].batch_in_epoch == 32 and run.state["progress"].global_step == 82


def test_a_skipped_step_leaves_weights_and_optimizer_state_unchanged(config, tmp_path):
    """trainer.on_nonfinite=skip, in-process: a window whose loss is NaN (one NaN pixel in one of its two
    batches) is dropped whole: weights, every optimizer tensor and the EMA copy stay bit for bit, no gradient is
    left behind, and the next good window trains to finite weights."""
    # 16 samples, batch 8, 2 batches a window: one optimizer step per epoch
    cfg = config("trainer.on_nonfinite=skip", "trainer.accumulate_grad_batches=2", "trainer.ema.decay=0.9",
                 "data.train_size=16")
    run = build(cfg, tmp_path / "run")
    kept = ("model_state_dict", "optimizer_state_dict", "ema_state_dict", "ema_updates", "scaler_state_dict")

    def snapshot():
        return through_a_file({k: v for k, v in state.state_dicts(run.state).items() if k in kept})

    messages.announce(run)
    run.stop = StopRequest()
    try:
        loop.train_epoch(run, 0)  # a good step first: Adam's moments and the EMA copy hold something
        epoch_end.end_epoch(run, 0)
        before = snapshot()
        assert before["optimizer_state_dict"]["state"] and before["ema_updates"] == 1
        images = run.data["train"].tensors[0]  # the in-memory train set the loader indexes
        pixel = images[0, 0, 0, 0].item()
        images[0, 0, 0, 0] = float("nan")
        loop.train_epoch(run, 1)
        progress = run.state["progress"]
        assert progress.nonfinite_skips == 1 and progress.global_step == 2, progress
        assert_same(snapshot(), before, "after the skipped step")
        assert all(p.grad is None for p in run.model.parameters()), "the dropped window left gradients behind"

        epoch_end.end_epoch(run, 1)
        images[0, 0, 0, 0] = pixel
        loop.train_epoch(run, 2)
        weights = run.model.state_dict()
        assert progress.nonfinite_skips == 1 and all(torch.isfinite(w).all() for w in weights.values())
        assert not all(torch.equal(weights[k], before["model_state_dict"][k]) for k in weights), "it stopped training"
    finally:
        run.stop.close()
        run.writer.wait()
