"""The two-phase Swin multi-task story: SimMIM pretraining, decoder dropped, multi-task fine-tuning."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_resumed, assert_same_state, load, run_cli

SWIN = ["+experiment=swin_admoe", "model=swin_mmoe", "model.embed_dim=8", "data.image_size=32",
        "data.train_size=32", "data.val_size=16", "trainer.batch_size=8", "trainer.num_threads=1",
        "schedule.pretrain_epochs=2", "trainer.max_epochs=4", "trainer.save_interval=1", "trainer.keep_last=10",
        "optimizer.lr=1e-3", "logger=csv"]


def swin(run_dir, *overrides, cwd, **kwargs):
    return run_cli(*SWIN, f"hydra.run.dir={run_dir}", *overrides, cwd=cwd, **kwargs)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("swin")
    swin(cwd / "run", cwd=cwd)
    return cwd / "run"


def test_both_phases_and_their_checkpoints(story):
    ckpts = story / "checkpoints"
    assert (ckpts / "pretrain_checkpoint.pth").exists() and (ckpts / "finetune_checkpoint.pth").exists()
    pre, fine = load(ckpts / "pretrain_checkpoint.pth"), load(ckpts / "finetune_checkpoint.pth")
    assert pre["phase"] == "Pretrain (SimMIM)" and pre["is_pretrain"] and not pre["decoder_removed"]
    assert fine["phase"] == "Finetune (Classification)" and not fine["is_pretrain"] and fine["decoder_removed"]
    assert any(k.startswith("decoder.") for k in pre["model_state_dict"])
    for n in (3, 4):  # every fine-tuning checkpoint: no decoder left
        ckpt = load(ckpts / f"checkpoint_epoch_{n}.pth")
        assert not [k for k in ckpt["model_state_dict"] if k.startswith("decoder.")]
        assert ckpt["best_val_acc"] == fine["best_val_acc"] or n == 3
    assert pre["best_recon_loss"] == pre["val_recon_loss"] > 0
    log = (story / "training.log").read_text()
    assert "1. Pretrain (SimMIM): epochs 1-2" in log and "2. Finetune (Classification): epochs 3-4" in log
    assert "decoder" in log.split("Model components:")[1] and "dropped ['decoder']" in log


def test_users_snippet_runs_verbatim(story):
    snippet = f"""
import torch
checkpoint = torch.load("checkpoint_epoch_3.pth", map_location='cpu')
print(f"Epoch: {{checkpoint['epoch']}}")
print(f"Phase: {{checkpoint['phase']}}")
print(f"Best accuracy: {{checkpoint['best_val_acc']:.4f}}")
print(f"Decoder removed: {{checkpoint.get('decoder_removed', False)}}")
print(f"Model parameters: {{len(checkpoint['model_state_dict'])}}")
decoder_keys = [k for k in checkpoint['model_state_dict'].keys() if k.startswith('decoder.')]
print(len(decoder_keys))
"""
    out = subprocess.run([sys.executable, "-c", snippet], cwd=story / "checkpoints", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[:2] == ["Epoch: 3", "Phase: Finetune (Classification)"]
    assert out[3] == "Decoder removed: True" and out[-1] == "0"


def test_encoder_optimizer_state_survives_the_decoder_removal(story):
    pre = load(story / "checkpoints" / "checkpoint_epoch_2.pth")
    fine = load(story / "checkpoints" / "checkpoint_epoch_3.pth")
    steps = 4  # 32 samples / batch 8 per epoch
    pre_names, fine_names = [[n for g in c["optimizer_state_dict"]["param_groups"] for n in g["param_names"]]
                             for c in (pre, fine)]
    assert any(n.startswith("decoder.") for n in pre_names) and not any(n.startswith("decoder.") for n in fine_names)
    w = "patch_embed.0.weight"
    pre_state = pre["optimizer_state_dict"]["state"][pre_names.index(w)]
    fine_state = fine["optimizer_state_dict"]["state"][fine_names.index(w)]
    assert float(pre_state["step"]) == 2 * steps and float(fine_state["step"]) == 3 * steps  # carried, not reset
    heads = fine["optimizer_state_dict"]["state"][fine_names.index("heads.diagnosis.1.weight")]
    assert float(heads["step"]) == steps  # unused while pretraining: its state starts at the switch


@pytest.mark.parametrize("epoch", [1, 3])  # during pretraining, during fine-tuning
def test_resume_continues_the_right_phase_bit_exact(story, tmp_path, epoch):
    start = story / "checkpoints" / f"checkpoint_epoch_{epoch}.pth"
    proc = swin(tmp_path / "resumed", "resume=full", f"resume.checkpoint={start}", cwd=tmp_path)
    plan = proc.stdout.split("Training plan:")[1]
    now = "1. Pretrain" if epoch < 2 else "2. Finetune"
    assert [line for line in plan.splitlines() if "<- now" in line][0].strip().startswith(now)
    a = load(story / "checkpoints" / "final_model.pth")
    b = load(tmp_path / "resumed" / "checkpoints" / "final_model.pth")
    assert_resumed(proc.stdout, start, load(start)["global_step"], b)  # the phase's position, not a retrain
    assert_same_state(b, a)  # weights, optimizer moments (carried across the switch), scheduler, RNG
    assert b["lineage"][-1]["epoch"] == epoch


def test_refuses_a_changed_pretrain_length(story, tmp_path):
    proc = swin(tmp_path / "x", "schedule.pretrain_epochs=1", "resume=full",
                f"resume.checkpoint={story / 'checkpoints' / 'checkpoint_epoch_3.pth'}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "reinterpret finished epochs" in err and "was 2" in err and "is 1 now" in err


def test_reset_into_a_single_phase_reports_parameter_matching(story, tmp_path):
    proc = swin(tmp_path / "single", "schedule=single", "trainer.max_epochs=1", "resume=reset_optimizer",
                f"resume.checkpoint={story}", cwd=tmp_path)
    line = [l for l in proc.stdout.splitlines() if "Parameter matching" in l][0]
    assert "missing" in line and "expected: modules ['decoder'] were dropped" in line
    assert "0 unexpected, 0 shape-mismatched" in line


def write_image_folder(root, classes=("cat", "dog", "owl"), n=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
                image[:, :, c] += 150  # the class is in one colour channel
                img = Image.fromarray(image)
                (img.convert("L") if i == 0 else img).save(root / split / name / f"{i}.png")  # one grayscale each


def test_image_folder_with_resnet(tmp_path):
    write_image_folder(tmp_path / "imgs")
    # no loss=: classification data selects cross-entropy and accuracy
    run_cli("model=resnet", "data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=32",
            "data.num_workers=0", "trainer.batch_size=4", "trainer.max_epochs=2",
            "trainer.num_threads=1", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    ckpt = load(tmp_path / "run" / "checkpoints" / "best_model.pth")
    assert 0 <= ckpt["best_val_acc"] <= 1 and ckpt["model_state_dict"]["fc.weight"].shape[0] == 3
    bad = run_cli("model=resnet", "data=image_folder", f"data.root={tmp_path / 'nope'}", "loss=cross_entropy",
                  cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "data.root=" in " ".join(bad.stderr.split())
    # a segmentation model on classification data: exit 2, one paragraph, no traceback, nothing written
    wrong = run_cli("model=unet", "data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_workers=0",
                    f"hydra.run.dir={tmp_path / 'wrong'}", cwd=tmp_path, check=False)
    err = " ".join(wrong.stderr.split())
    assert wrong.returncode == 2 and "Traceback" not in err and not (tmp_path / "wrong" / "checkpoints").exists()
    assert "model=unet and data=image_folder (classification data) do not fit" in err, err
