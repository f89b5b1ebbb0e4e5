"""project-preview [--out preview.png] [--epoch E] [--n N] [--check-files] [key=value ...]: look at training samples
before a long run.

    project-preview data=celebamask data.root=~/faces data.val_fraction=0.1 augment=face_parsing

Composes the config as run.py would (the same overrides), builds the training split and draws the first N samples
of epoch E's first batches exactly as training will see them (after augmentation, resized, the same random
draws): images with their masks overlaid in the data's colours and a legend of the class names present, or the
class name above each image for classification data.

With --check-files it draws nothing: it opens every image and mask of every split with the decoder training uses
and lists each file that cannot be read, with the decoder's reason, and each mask that is not single-channel
(exit 1 if any, 0 if none).
"""
import argparse
import sys
from pathlib import Path

from project.config_dir import compose
from project.errors import UserError

def samples(cfg, n: int, epoch: int) -> tuple[dict, list[tuple]]:
    """The data and the first n training samples of `epoch`, in training order, as training draws them."""
    from project import tasks
    from project.data.loader import Skipped, batch_order

    data = tasks.build_data(cfg)
    dataset = data["train"]
    order = [i for batch in batch_order(len(dataset), cfg.trainer.batch_size, cfg.seed, epoch) for i in batch.tolist()]
    keyed = getattr(dataset, "takes_keys", False)
    shown = (dataset[(cfg.seed, epoch, i)] if keyed else dataset[i] for i in order[:n])
    return data, [s for s in shown if not isinstance(s, Skipped)]  # data.on_bad_file=skip: as training skips


def check_files(cfg) -> int:
    """Open every image and mask of every split as training does; print each that cannot be read. 1 if any."""
    from project import tasks
    from project.data.folder import unreadable_files

    data = tasks.build_data(cfg)
    splits = [s for s in ("train", "val", "test") if hasattr(data.get(s), "files")]
    if not splits:
        raise UserError("--check-files reads image folders (data=seg_folder, image_folder, celebamask, lapa); "
                        f"{cfg.data.get('_target_')} reads no files.")
    files = list(dict.fromkeys(f for s in splits for f in data[s].files()))  # each once, in the splits' order
    dataset = data[splits[0]]
    bad = unreadable_files(files, dataset.channels, dataset.decoder, threads=cfg.data.get("num_workers") or 1)
    for problem in bad:
        print(problem)
    kinds = {k: sum(kind == k for kind, _ in files) for k in ("image", "mask")}
    what = f"{kinds['image']} images" + (f" and {kinds['mask']} masks" if kinds["mask"] else "")
    print(f"Checked {what} of {', '.join(splits)} with decoder {dataset.decoder}: "
          + (f"{len(bad)} cannot be read (listed above)." if bad else "every file can be read."))
    return 1 if bad else 0


def draw(data: dict, shown: list[tuple], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from project.data.folder import palette
    from project.data.normalisation import LEGACY, to_pixels

    classes = data.get("classes") or []
    colors = np.array(data.get("colors") or palette(len(classes)), dtype=np.float32) / 255
    ignore = data.get("ignore_index", 255)
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.9), squeeze=False)
    present = set()
    for ax, sample in zip(axes.flat, shown):
        norm = data.get("normalisation") or LEGACY  # data of another builder: the framework's default
        image = to_pixels(sample[0], norm["mean"], norm["std"]).numpy().transpose(1, 2, 0)
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        target = sample[1] if len(sample) > 1 else None
        if target is not None and target.dim() == 2:  # a mask: its classes in their colours over the image
            mask = target.numpy()
            valid = mask != ignore
            overlay = image.copy()
            overlay[valid] = 0.45 * image[valid] + 0.55 * colors[mask[valid]]
            overlay[~valid] = 0.5 * image[~valid] + 0.5  # ignore_index (padding of a rotation or crop): pale
            image = overlay
            present |= set(np.unique(mask[valid]).tolist()) | ({ignore} if (~valid).any() else set())
        elif target is not None:
            ax.set_title(classes[int(target)] if classes else str(int(target)), fontsize=9)
        ax.imshow(image)
    for ax in axes.flat:
        ax.axis("off")
    handles = [Patch(color=colors[c], label=f"{c} {classes[c]}") for c in sorted(present - {ignore})]
    if ignore in present:
        handles.append(Patch(color=(0.85, 0.85, 0.85), label=f"{ignore} ignore_index"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    from project.atomic import replacing

    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-preview", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, as for run.py (data=..., augment=...)")
    parser.add_argument("--out", default="preview.png", help="the PNG to write (default: preview.png)")
    parser.add_argument("--epoch", type=int, default=1, help="which epoch's samples, as the log counts (default 1)")
    parser.add_argument("--n", type=int, default=16, help="how many samples (default 16)")
    parser.add_argument("--check-files", action="store_true",
                        help="draw nothing: list every image and mask that cannot be read (exit 1 if any)")
    args = parser.parse_args(argv)
    try:
        cfg = compose(args.overrides)
        if args.check_files:
            return check_files(cfg)
        if args.epoch < 1 or args.n < 1:
            raise UserError(f"--epoch {args.epoch} --n {args.n}: both count from 1.")
        data, shown = samples(cfg, args.n, args.epoch - 1)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if not shown:
        print("Error: the training split is empty.", file=sys.stderr)
        return 2
    augment = (cfg.get("augment") or {}).get("transforms")
    title = (f"{len(shown)} training samples of epoch {args.epoch}, seed {cfg.seed}, "
             f"{'augmented' if augment else 'no augmentation'} ({' '.join(args.overrides) or 'defaults'})")
    path = draw(data, shown, Path(args.out), title)
    print(f"Wrote {path}: {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
