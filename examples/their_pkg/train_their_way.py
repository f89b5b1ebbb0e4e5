"""The user's own training script, as such scripts are: python train_their_way.py DATA_ROOT --out best_model.pth

It does what such scripts do, not what the framework does: inputs are `pixel / 255` (no mean/std), the loss is
their own (cross-entropy + Dice over the softmax probabilities), epochs are counted from 0 (after two epochs the
file says `epoch: 1`), and the numbers saved are numpy scalars. It splits 10% of DATA_ROOT/train off for
validation, trains with AdamW and a cosine schedule, scores F1 on each batch flattened (background included) and
averages the batches (a number no benchmark computes), and saves its best model with its curves: {"epoch",
"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "best_f_score" (a numpy float), "config",
"history" (train_loss, train_f_score, val_loss, val_f_score, lr: lists of numpy floats)}.
"""
import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from their_pkg.their_model import MicroSegFormer


def load(root: Path, size: int):
    images = sorted((root / "train" / "images").glob("*.jpg"))
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in images])
    y = np.stack([np.asarray(Image.open(root / "train" / "masks" / f"{p.stem}.png").resize((size, size),
                                                                                        Image.NEAREST)) for p in images])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # their preprocessing: 0-1, no mean/std
    return x, torch.from_numpy(y).long()


def ce_dice_loss(logits, target, num_classes, smooth=1.0):
    """Their loss: cross-entropy + (1 - mean soft Dice over the classes), Dice on the softmax probabilities."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    inter, total = (probs * onehot).sum((0, 2, 3)), (probs + onehot).sum((0, 2, 3))
    dice = (2 * inter + smooth) / (total + smooth)
    return F.cross_entropy(logits, target) + (1 - dice.mean())


def batch_f1(logits, target, num_classes):
    pred = logits.argmax(1).flatten()
    target = target.flatten()
    scores = []
    for c in range(num_classes):  # background included, classes absent from both skipped
        tp = ((pred == c) & (target == c)).sum().item()
        fp, fn = ((pred == c) & (target != c)).sum().item(), ((pred != c) & (target == c)).sum().item()
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=Path("best_model.pth"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    config = {"num_classes": 19, "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 8, "val_split": 0.1,
              "epochs": args.epochs, "image_size": args.size}
    x, y = load(args.root, args.size)
    order = torch.randperm(len(x))
    n_val = max(1, int(len(x) * config["val_split"]))
    val, train = order[:n_val], order[n_val:]
    model = MicroSegFormer(num_classes=19)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    history = {k: [] for k in ("train_loss", "train_f_score", "val_loss", "val_f_score", "lr")}
    best = -1.0
    for epoch in range(args.epochs):  # counted from 0, as their script does
        model.train()
        losses, scores = [], []
        for idx in train[torch.randperm(len(train))].split(config["batch_size"]):
            logits = model(x[idx])
            loss = ce_dice_loss(logits, y[idx], 19)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item()), scores.append(batch_f1(logits.detach(), y[idx], 19))
        history["lr"].append(np.float64(optimizer.param_groups[0]["lr"]))
        scheduler.step()
        history["train_loss"].append(np.mean(losses)), history["train_f_score"].append(np.mean(scores))
        model.eval()
        with torch.no_grad():
            out = [(ce_dice_loss(model(x[i]), y[i], 19).item(), batch_f1(model(x[i]), y[i], 19))
                   for i in val.split(config["batch_size"])]
        val_loss, val_f = np.mean(out, axis=0)  # numpy floats, saved as they are
        history["val_loss"].append(val_loss), history["val_f_score"].append(val_f)
        print(f"epoch {epoch}: train loss {history['train_loss'][-1]:.4f} val loss {val_loss:.4f} val F1 {val_f:.4f}")
        if val_f > best:
            best = val_f
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": scheduler.state_dict(),
                        "best_f_score": np.float64(best), "config": config, "history": history}, args.out)
    print(f"best val F1 {best:.4f} -> {args.out}")


if __name__ == "__main__":
    main()
