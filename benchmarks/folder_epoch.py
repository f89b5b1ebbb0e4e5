"""An epoch on your own image folder: the trainer against the plain PyTorch loop a user writes for the same work.

    python benchmarks/folder_epoch.py --root DIR [--limit 200] [--image-size 256] [--epochs 2] [--rounds 3]
                                      [--threads 2] [override ...]

DIR is a segmentation folder as `data=celebamask` reads it: DIR/train/images/NAME.jpg and DIR/train/masks/NAME.png
(the face-parsing course's `data/`, for instance). --limit takes its first N pairs (symlinked into a temporary
folder), 10% of them validate. Both loops do the same work each epoch: decode the JPEGs and PNGs in 2 DataLoader
workers, the same augmentation (augment=face_parsing: random resized crop, flip with the left/right labels swapped,
rotation, colour jitter), the model (model=microsegformer, 19 classes), AdamW, a cross-entropy + Dice loss,
gradient clipping at 1.0, batch 8, a validation pass scored per image, and a checkpoint save.

- trainer: project.recipe.train as `python run.py` runs it, with its defaults (per-class and per-image scores,
  metrics.csv, last.pth and best_model.pth with the whole training state, the lineage record), logger=csv.
- plain: what a user's script does: its own Dataset (Pillow, pixel / 255, the same torchvision v2 transforms), a
  shuffled DataLoader, cross-entropy + Dice over a float one-hot (ignoring the pixels the rotation pads), clip_grad_norm_, the
  benchmark's per-image F-score on the validation images, torch.save of the weights and the optimizer every
  epoch and of the best weights when they improve.

Each measurement is a fresh process; an epoch's time is the time from one epoch's end (after its save) to the next
one's, averaged over epochs 2..N (the set-up and the first epoch, with the workers' start, are left out on both
sides: --epochs 1 times them instead). The two alternate round by round (interleaved, so drift in the machine's
load hits both alike). Printed: each round's seconds per epoch and the median of the rounds' ratios trainer / plain. Target: <= 1.0. Extra arguments are Hydra overrides
applied to both (e.g. model.dropout=0.1, data.num_workers=4).
"""
import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

ROOT = Path(__file__).resolve().parents[1]


def overrides(args, root: Path) -> list[str]:
    return [f"data.root={root}", "data=celebamask", "data.val_fraction=0.1", f"data.image_size={args.image_size}",
            "augment=face_parsing", "model=microsegformer", "trainer.batch_size=8", "trainer.gradient_clip_val=1.0",
            f"trainer.max_epochs={args.epochs}", f"trainer.num_threads={args.threads}", "data.num_workers=2",
            "logger=csv", *args.overrides]


def compose(over: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=over)


def limited(root: Path, limit: int | None, into: Path) -> Path:
    """root's first `limit` image/mask pairs as symlinks under `into` (root itself without a limit)."""
    if not limit:
        return root
    for sub in ("images", "masks"):
        (into / "train" / sub).mkdir(parents=True)
    for image in sorted((root / "train" / "images").iterdir())[:limit]:
        mask = root / "train" / "masks" / f"{image.stem}.png"
        (into / "train" / "images" / image.name).symlink_to(image)
        (into / "train" / "masks" / mask.name).symlink_to(mask)
    return into


def run_trainer(cfg, work: Path) -> list[float]:
    """The trainer's run; the time each epoch ended (its epoch line, logged once validation and the save are done)."""
    import logging
    import re

    from project.recipe.train import train

    logging.basicConfig(filename=work / "training.log", level=logging.INFO, format="%(created)f %(message)s")
    train(cfg, work, search_dirs=[])
    lines = (work / "training.log").read_text().splitlines()
    return [float(m[1]) for m in (re.match(r"^(\S+) epoch \d+/\d+ ", line) for line in lines) if m]


# --- the plain loop: a face-parsing script as users write it (pixel / 255, epochs counted from 0, a per-image
# F-score, torch.save of a dict of state dicts), on the work the trainer does for the same config

class FaceFolder(Dataset):
    def __init__(self, root: Path, names: list[str], size: int, transform=None):
        self.root, self.names, self.size, self.transform = root, names, size, transform

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        name = self.names[i]
        with Image.open(self.root / "train" / "images" / f"{name}.jpg") as im:
            image = tv_tensors.Image(TF.pil_to_tensor(im.convert("RGB")))
        with Image.open(self.root / "train" / "masks" / f"{name}.png") as m:
            mask = tv_tensors.Mask(torch.from_numpy(np.array(m, dtype=np.int64))[None])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        image = TF.resize(image, [self.size, self.size], antialias=True)
        mask = TF.resize(mask, [self.size, self.size])
        return image.float() / 255, mask[0].long()


def ce_dice(logits, target, ignore_index: int = 255, smooth: float = 1.0):
    """Cross-entropy + soft Dice over softmax probabilities and a float one-hot, the pixels the rotation padded
    (ignore_index) left out of both: how a user's script writes it."""
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.where(valid[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return ce + (1 - ((2 * inter + smooth) / (denom + smooth)).mean())


def f_score(pred: np.ndarray, gt: np.ndarray, eps: float = 1e-7) -> float:
    """The benchmark's per-image score: mean F1 over the classes present in the ground truth."""
    scores = []
    for c in np.unique(gt):
        tp = np.sum((pred == c) & (gt == c))
        precision, recall = tp / (np.sum(pred == c) + eps), tp / (np.sum(gt == c) + eps)
        scores.append(2 * precision * recall / (precision + recall + eps))
    return float(np.mean(scores))


def compose_transforms(transforms):
    transforms = [t for t in (transforms or []) if t is not None]
    return v2.Compose(transforms) if transforms else None


def split(root: Path, fraction: float = 0.1) -> tuple[list[str], list[str]]:
    names = sorted(p.stem for p in (root / "train" / "images").iterdir())
    random.Random(0).shuffle(names)
    n_val = max(1, round(len(names) * fraction))
    return names[n_val:], names[:n_val]


def train_plain(cfg, root: Path, work: Path) -> list[float]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.trainer.num_threads)
    size, bs, workers = cfg.data.image_size, cfg.trainer.batch_size, cfg.data.num_workers
    train_names, val_names = split(root)
    augment = instantiate(cfg.augment)
    transform = compose_transforms(augment.get("transforms"))
    train_loader = DataLoader(FaceFolder(root, train_names, size, transform), batch_size=bs, shuffle=True,
                              num_workers=workers, drop_last=False, persistent_workers=workers > 0)
    val_loader = DataLoader(FaceFolder(root, val_names, size), batch_size=bs, num_workers=workers)
    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, in_channels=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.trainer.max_epochs)
    best, ends = 0.0, []
    for epoch in range(cfg.trainer.max_epochs):
        model.train()
        for x, y in train_loader:
            loss = ce_dice(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
        scheduler.step()
        model.eval()
        scores = []
        with torch.no_grad():
            for x, y in val_loader:
                pred = model(x).argmax(1).numpy()
                scores += [f_score(p, g) for p, g in zip(pred, y.numpy())]
        score = float(np.mean(scores))
        state = {"epoch": epoch, "model_state_dict": model.state_dict(),
                 "optimizer_state_dict": optimizer.state_dict(), "best_f_score": max(best, score)}
        torch.save(state, work / "last_model.pth")
        if score > best:
            best = score
            torch.save(state, work / "best_model.pth")
        ends.append(time.time())
    return ends


def run(kind: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = limited(Path(args.root).resolve(), args.limit, Path(tmp) / "data")
        cfg = compose(overrides(args, root))
        work = Path(tmp) / "run"
        work.mkdir()
        start = time.time()
        ends = run_trainer(cfg, work) if kind == "trainer" else train_plain(cfg, root, work)
        assert len(ends) == args.epochs, f"{kind}: {len(ends)} epoch ends for {args.epochs} epochs"
        # from the first epoch's end to the last's: the epochs themselves, without the set-up either side has
        timed = (ends[-1] - ends[0]) / (args.epochs - 1) if args.epochs > 1 else ends[0] - start
        return {"kind": kind, "seconds_per_epoch": timed, "set_up_and_first_epoch": ends[0] - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the folder holding train/images and train/masks")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["trainer", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.child:
        return print(json.dumps(run(args.child, args)))
    rounds = []
    for r in range(args.rounds):
        seconds = {}
        for kind in (("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")):
            cmd = [sys.executable, __file__, "--child", kind, *(sys.argv[1:] if argv is None else argv)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(f"{kind} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
            seconds[kind] = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_epoch"]
        rounds.append(seconds)
        print(f"round {r + 1}: trainer {seconds['trainer']:7.2f} s/epoch, plain {seconds['plain']:7.2f} s/epoch, "
              f"ratio {seconds['trainer'] / seconds['plain']:.3f}", flush=True)
    ratio = statistics.median(s["trainer"] / s["plain"] for s in rounds)
    print(f"\n{args.limit or 'all'} pairs of {args.root} at {args.image_size} px, {args.epochs} epochs per process "
          f"({'epochs 2-' + str(args.epochs) + ' timed' if args.epochs > 1 else 'set-up and epoch 1 timed'}), "
          f"{args.rounds} rounds: trainer {statistics.median(s['trainer'] for s in rounds):.2f} s/epoch, plain "
          f"{statistics.median(s['plain'] for s in rounds):.2f} s/epoch, trainer / plain {ratio:.3f} (median of the "
          "rounds' ratios)")


if __name__ == "__main__":
    main()
