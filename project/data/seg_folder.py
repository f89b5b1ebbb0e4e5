"""Your own segmentation data: ROOT/train/{images,masks}/NAME.{jpg,png}, validation from ROOT/val/ or split off
train/ (data.val_fraction, data.val_list), and an optional ROOT/test/ (images, with or without masks).

Masks are single-channel PNGs whose pixel values are class indices (as in CelebAMask-HQ), paired with the image
of the same NAME; the masks folder's name is data.masks_dir (LaPa: labels). Training samples go through the
augment option (conf/augment/), then images are resized bilinearly and masks by nearest neighbour to
data.image_size. A mask value that is neither a class index nor data.ignore_index stops the run naming the file; so
does an image or mask that cannot be read, unless data.on_bad_file=skip leaves such samples out.
"""
from pathlib import Path

from torch.utils.data import Dataset

from project.data import folder, splits
from project.data.augment import compose
from project.data.normalisation import LEGACY, checked
from project.errors import UserError


class SegFolder(Dataset):
    takes_keys = True  # indexed by (seed, epoch, index): see project/data/folder.py

    def __init__(self, pairs: list[tuple[Path, Path | None]], image_size: int, in_channels: int, num_classes: int,
                 ignore_index: int, norm: dict, decoder: str = "pil", augment=None, on_bad_file: str = "error"):
        self.pairs, self.channels, self.decoder, self.on_bad_file = pairs, in_channels, decoder, on_bad_file
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.pipeline = folder.Pipeline(image_size, norm, augment)
        self.has_targets = all(mask is not None for _, mask in pairs)

    def __len__(self):
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [image.stem for image, _ in self.pairs]

    def files(self) -> list[tuple[str, Path]]:
        """("image" | "mask", path) of every file a sample reads."""
        return [(kind, path) for pair in self.pairs for kind, path in zip(("image", "mask"), pair) if path is not None]

    def __getitem__(self, key):
        return folder.read_or_skip(self.sample, key, self.on_bad_file)

    def sample(self, key):
        image_path, mask_path = self.pairs[folder.split_key(key)[2]]
        image = folder.decode(image_path, self.channels, self.decoder)
        if mask_path is None:
            return self.pipeline(key, image)
        mask = folder.read_mask(mask_path)
        if mask.shape != image.shape[1:]:
            raise UserError(f"Mask {mask_path} is {tuple(mask.shape)} pixels but its image {image_path} is "
                            f"{tuple(image.shape[1:])}; each mask must match its image's size.")
        folder.check_mask(mask, mask_path, self.num_classes, self.ignore_index)
        return self.pipeline(key, image, mask)


def pairs_in(split_dir: Path, images_dir: str, masks_dir: str, masks_required: bool = True) -> dict:
    """{NAME: (image, mask or None)} of one split folder; unpaired files are an error."""
    images = folder.image_files(split_dir / images_dir)
    if not images:
        raise UserError(f"{split_dir / images_dir} holds no image files ({', '.join(folder.IMAGE_EXTS)}).")
    if not (split_dir / masks_dir).is_dir() and not masks_required:
        return {name: (path, None) for name, path in images.items()}
    masks = {p.stem: p for p in sorted((split_dir / masks_dir).iterdir()) if p.suffix.lower() == ".png"}
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        raise UserError(f"{split_dir}: {len(unpaired)} images or masks have no partner (e.g. {unpaired[:3]}); every "
                        f"{images_dir}/NAME.jpg|png needs a {masks_dir}/NAME.png.")
    return {name: (images[name], masks[name]) for name in sorted(images)}


def build(root, num_classes, classes=None, colors=None, flip_pairs=None, in_channels=3, image_size=128,
          ignore_index=255, num_workers=2, images_dir="images", masks_dir="masks", val_fraction=None, val_list=None,
          split_seed=0, decoder="pil", mean=LEGACY["mean"], std=LEGACY["std"], augment=None, on_bad_file="error"):
    root = Path(root).expanduser()
    layout = (f"ROOT/train/{{{images_dir},{masks_dir}}}/NAME.{{jpg,png}}, optionally ROOT/val/ (or "
              "data.val_fraction=0.1) and ROOT/test/")
    missing = [str(root / "train" / d) for d in (images_dir, masks_dir) if not (root / "train" / d).is_dir()]
    if missing:
        raise UserError(f"data.root={str(root)!r} is not a segmentation folder: missing {', '.join(missing)}. Lay it "
                        f"out as {layout} and pass data.root=ROOT.")
    described = folder.describe_classes(num_classes, classes, colors, flip_pairs)
    folder.check_decoder(decoder)
    folder.check_on_bad_file(on_bad_file)
    norm = checked(mean, std, in_channels)
    train = pairs_in(root / "train", images_dir, masks_dir)
    has_val = (root / "val" / images_dir).is_dir()
    train, val, split = splits.choose(root, train, pairs_in(root / "val", images_dir, masks_dir) if has_val else None,
                                      val_fraction, val_list, split_seed, f"ROOT/val/{{{images_dir},{masks_dir}}}")
    augment = compose(augment)
    args = dict(image_size=image_size, in_channels=in_channels, num_classes=num_classes, ignore_index=ignore_index,
                decoder=decoder, norm=norm, on_bad_file=on_bad_file)
    data = {"train": SegFolder(list(train.values()), augment=augment, **args),
            "val": SegFolder(list(val.values()), **args),
            **described, "ignore_index": ignore_index, "num_workers": num_workers, "normalisation": norm,
            **split, "model_args": {"num_classes": num_classes, "in_channels": in_channels}}
    if (root / "test" / images_dir).is_dir():
        data["test"] = SegFolder(list(pairs_in(root / "test", images_dir, masks_dir, masks_required=False).values()),
                                 **args)
    return data
