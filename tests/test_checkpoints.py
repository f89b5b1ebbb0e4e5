"""The checkpoint contract: which files, which keys, loadable with plain torch.load, retention."""
import csv
import subprocess
import sys

import torch

from conftest import load

CONTRACT_KEYS = {"epoch", "global_step", "phase", "model_state_dict", "optimizer_state_dict",
                 "scheduler_state_dict", "best_f_score", "best_epoch", "val_f_score", "config", "rng",
                 "early_stopping", "lineage"}


def test_files_keys_and_retention(parent_run):
    ckpts = parent_run / "checkpoints"
    # save_interval=1, keep_last=1: only the newest periodic checkpoint survives
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "best_model.pth", "checkpoint_epoch_2.pth", "final_model.pth", "last.pth"]
    for path in ckpts.iterdir():
        ckpt = load(path)
        assert CONTRACT_KEYS <= set(ckpt), f"{path.name} lacks {CONTRACT_KEYS - set(ckpt)}"
        assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
        assert {"patience", "bad_epochs", "stopped"} <= set(ckpt["early_stopping"])
        assert ckpt["lineage"] == []  # trained from scratch
    last, final = load(ckpts / "last.pth"), load(ckpts / "final_model.pth")
    assert last["epoch"] == final["epoch"] == 2 and last["global_step"] == 2 * 6  # 48 samples / batch 8
    assert last["config"]["model"]["dropout"] == 0.1 and isinstance(last["config"]["model"]["embed_dims"], list)
    best = load(ckpts / "best_model.pth")
    assert best["epoch"] == best["best_epoch"] and best["val_f_score"] == best["best_f_score"]
    assert last["best_f_score"] == max(last["best_f_score"], last["val_f_score"])


def test_metrics_csv_and_training_log(parent_run):
    rows = list(csv.DictReader(open(parent_run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"epoch", "phase", "lr", "train_loss", "train_f_score", "val_loss", "val_f_score",
            "val_pixel_acc"} <= set(rows[0])
    log = (parent_run / "training.log").read_text()
    assert "epoch 2/2" in log and "Best val f_score" in log


def test_users_inspection_snippet_runs_verbatim(parent_run):
    snippet = (
        "import torch\n"
        f"ckpt = torch.load('{parent_run}/checkpoints/best_model.pth')\n"
        "print(f'Epoch: {ckpt[\"epoch\"]}')\n"
        "print(f'Best F-Score: {ckpt[\"best_f_score\"]:.6f}')\n"
        "print(f'Val F-Score: {ckpt[\"val_f_score\"]:.6f}')\n"
    )
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True).stdout
    best = torch.load(parent_run / "checkpoints" / "best_model.pth")
    assert out.splitlines() == [f"Epoch: {best['epoch']}", f"Best F-Score: {best['best_f_score']:.6f}",
                                f"Val F-Score: {best['val_f_score']:.6f}"]
