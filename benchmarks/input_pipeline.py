"""Input pipeline: images/s of the framework's training loader against a plain torch DataLoader.

A folder of generated 512x512 JPEG images with class-index PNG masks is written to a temporary directory. The
framework's loader is built as run.py builds it: the config composed with `data=seg_folder data.root=DIR
augment=face_parsing`, the dataset from `tasks.build_data`, the loaders from `setup.build_loaders` (one per split,
persistent workers, the epoch's batches set in the main process, keys (seed, epoch, index) sent to the dataset).
The plain loader is `DataLoader(dataset, batch_size, shuffle=True, num_workers, persistent_workers=True)` over
the same dataset objects (train and val), so the same decoding and the same transforms (a plain int index is a
key of epoch 0).

Each epoch takes the training batches, then validates (takes the val batches), as a training loop does; the
framework's loop also does what train_epoch does after an epoch: `prefetch` the next one, whose first batches
then load during validation. For each worker count the two loaders take turns (the order alternates between
rounds), each for --epochs epochs with fresh loaders. Reported per loader: training images/s over the epochs
after the first (wall time from asking for the epoch's first batch to the end of its validation: the steady
state, workers started, files in the page cache), the first epoch's time to first batch (worker start-up
included) and the later epochs' time to first batch (the time a GPU would wait at each epoch's start); medians
over the rounds.

    python benchmarks/input_pipeline.py                       # 0 and 2 workers, 3 rounds
    python benchmarks/input_pipeline.py --workers 2 4 --rounds 5 --augment none
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(root: Path, n_train: int, n_val: int, size: int, classes: int) -> None:
    """JPEG faces-like images (smooth blobs, noise) and PNG masks of `classes` labels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            for label in range(1, classes):
                cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(size // 16, size // 5)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = label
            palette = rng.integers(0, 256, (classes, 3))
            image = palette[mask] + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / split / "images" / f"{i:05d}.jpg",
                                                                      quality=90)
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i:05d}.png")


def compose(data_root: Path, args, workers: int):
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = ["data=seg_folder", f"data.root={data_root}", f"data.num_classes={args.classes}",
                 f"data.image_size={args.image_size}", f"data.num_workers={workers}",
                 f"trainer.batch_size={args.batch_size}", "logger=csv"]
    if (ROOT / "conf" / "augment").is_dir():
        overrides.append(f"augment={args.augment}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def framework_epochs(cfg, data, epochs: int):
    """The run's loaders: setup.build_loaders, as setup() builds them; per epoch what train_epoch and end_epoch
    do with them. Yields (train batches, what to do after them: prefetch and validate)."""
    import torch

    from project.recipe import setup

    loaders = setup.build_loaders(cfg, data, torch.device("cpu"))

    def after(epoch):
        if epoch + 1 < epochs:
            loaders["train"].prefetch(epoch + 1)
        for _ in loaders["val"].epoch(0):
            pass

    try:
        for epoch in range(epochs):
            yield (lambda e=epoch: loaders["train"].epoch(e)), (lambda e=epoch: after(e))
    finally:
        for loader in loaders.values():
            loader.close()


def plain_epochs(cfg, data, epochs: int):
    """What one writes by hand: shuffled training batches and validation, DataLoaders with persistent workers."""
    import torch
    from torch.utils.data import DataLoader

    workers = data["num_workers"]
    train, val = (DataLoader(data[split], batch_size=cfg.trainer.batch_size, shuffle=split == "train",
                             num_workers=workers, persistent_workers=workers > 0,
                             generator=torch.Generator().manual_seed(cfg.seed)) for split in ("train", "val"))

    def validate():
        for _ in val:
            pass

    try:
        for _ in range(epochs):
            yield (lambda: iter(train)), validate
    finally:
        for loader in (train, val):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()


def trial(make, cfg, data, epochs: int) -> dict:
    """Per epoch: seconds from asking for the first batch to getting it, and to the end of validation; the
    training images seen."""
    firsts, totals, images = [], [], []
    for start_epoch, after in make(cfg, data, epochs):
        tic = time.perf_counter()
        first, n = None, 0
        for batch in start_epoch():
            if first is None:
                first = time.perf_counter() - tic
            n += len(batch[0])
        after()
        totals.append(time.perf_counter() - tic)
        firsts.append(first)
        images.append(n)
    return {"first": firsts, "total": totals, "images": images}


def steady(got: dict) -> float:
    """Training images/s after the first epoch (validation included in the time)."""
    return sum(got["images"][1:]) / sum(got["total"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--images", type=int, default=256, help="training images in the generated folder")
    parser.add_argument("--size", type=int, default=512, help="side of the generated JPEGs and masks")
    parser.add_argument("--image-size", type=int, default=256, help="data.image_size (what the model gets)")
    parser.add_argument("--classes", type=int, default=19, help="data.num_classes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--augment", default="face_parsing", help="the augment option (conf/augment/)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data.num_workers to measure")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (the first is the warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--data", type=Path, default=None, help="use (or write) the folder here, not a temp dir")
    args = parser.parse_args()

    import torch

    from project import tasks

    torch.set_num_threads(1)  # as the main process of a run with trainer.num_threads=1: the workers get the rest
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "data"
        if not (root / "train").is_dir():
            t0 = time.perf_counter()
            write_folder(root, args.images, max(4, args.images // 8), args.size, args.classes)
            print(f"wrote {args.images} + {max(4, args.images // 8)} JPEGs of {args.size}px with PNG masks to {root} "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
        setups = {}
        for workers in args.workers:
            cfg = compose(root, args, workers)
            setups[workers] = cfg, tasks.build_data(cfg)
        for i in range(len(setups[args.workers[0]][1]["train"])):  # warm-up: files in the page cache, code paths
            setups[args.workers[0]][1]["train"][i]
        results = {}
        for r in range(args.rounds):
            for workers in args.workers:
                cfg, data = setups[workers]
                order = [("framework", framework_epochs), ("plain", plain_epochs)]
                for name, make in order if r % 2 == 0 else order[::-1]:
                    got = trial(make, cfg, data, args.epochs)
                    results.setdefault((workers, name), []).append(got)
                    print(f"round {r + 1} workers {workers} {name:9s}: {steady(got):6.1f} img/s, first batch "
                          + ", ".join(f"{f * 1000:.0f}" for f in got["first"]) + " ms", flush=True)

    print(f"\n{args.images} JPEGs {args.size}px -> {args.image_size}px, augment={args.augment}, batch "
          f"{args.batch_size}, {args.epochs} epochs per trial, median of {args.rounds} rounds")
    print("| workers | framework img/s | plain img/s | ratio (of the medians; median of the rounds' ratios) "
          "| first batch, epoch 1 (framework / plain) | first batch, later epochs (framework / plain) |")
    print("|---|---|---|---|---|---|")
    for workers in args.workers:
        row = {}
        for name in ("framework", "plain"):
            trials = results[(workers, name)]
            row[name] = (statistics.median(steady(t) for t in trials),
                         statistics.median(t["first"][0] for t in trials) * 1000,
                         statistics.median(f for t in trials for f in t["first"][1:]) * 1000)
        fw, pl = row["framework"], row["plain"]
        paired = statistics.median(steady(a) / steady(b) for a, b in zip(results[(workers, "framework")],
                                                                         results[(workers, "plain")]))
        print(f"| {workers} | {fw[0]:.1f} | {pl[0]:.1f} | {fw[0] / pl[0]:.3f}; {paired:.3f} | {fw[1]:.0f} / "
              f"{pl[1]:.0f} ms | {fw[2]:.0f} / {pl[2]:.0f} ms |")


if __name__ == "__main__":
    main()
