"""Your own classification data: ROOT/train/CLASS/*.{png,jpg,...} (torchvision's ImageFolder layout), validation
from ROOT/val/CLASS/ or split off train/ (data.val_fraction, data.val_list of CLASS/NAME lines), and an optional
ROOT/test/ (class folders, or images without labels).

Images are converted to `in_channels` channels (grayscale or RGB, whatever the files are), go through the
augment option on the training split (conf/augment/), then are resized to `image_size` and normalised. The
classes are the folder names of train/ and must be the same in val/.
"""
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes

from project.data import folder, splits
from project.data.augment import compose
from project.data.normalisation import LEGACY, checked
from project.errors import UserError

LAYOUT = "ROOT/train/CLASS/IMAGE.png|jpg, optionally ROOT/val/CLASS/ (or data.val_fraction=0.1) and ROOT/test/"


class ClassFolder(Dataset):
    takes_keys = True  # indexed by (seed, epoch, index): see project/data/folder.py

    def __init__(self, samples: list[tuple[Path, int | None]], image_size: int, in_channels: int, norm: dict,
                 decoder="pil", mean=LEGACY["mean"], std=LEGACY["std"], augment=None, on_bad_file="error"):
        self.samples, self.channels, self.decoder, self.on_bad_file = samples, in_channels, decoder, on_bad_file
        self.pipeline = folder.Pipeline(image_size, norm, augment)
        self.has_targets = all(label is not None for _, label in samples)

    def __len__(self):
        return len(self.samples)

    def files(self) -> list[tuple[str, Path]]:
        """("image", path) of every file a sample reads."""
        return [("image", path) for path, _ in self.samples]

    def __getitem__(self, key):
        return folder.read_or_skip(self.sample, key, self.on_bad_file)

    def sample(self, key):
        path, label = self.samples[folder.split_key(key)[2]]
        (image,) = self.pipeline(key, folder.decode(path, self.channels, self.decoder))
        return (image,) if label is None else (image, label)


def labelled(split_dir: Path, classes: list[str]) -> dict[str, tuple[Path, int]]:
    """{CLASS/NAME: (path, class index)} of the class folders of one split."""
    return {f"{name}/{path.stem}": (path, index) for index, name in enumerate(classes)
            for path in folder.image_files(split_dir / name).values()}


def validation(root: Path, classes: list[str]) -> dict:
    """val/'s class folders, which must be train/'s."""
    val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    if val_classes != classes:
        raise UserError(f"data.root={str(root)!r}: train/ has classes {classes} but val/ has {val_classes}; both "
                        "need the same class folders.")
    val = labelled(root / "val", classes)
    if not val:
        raise UserError(f"data.root={str(root)!r}: the class folders of val/ hold no images. Put validation images "
                        "there, or remove val/ and split train/ with data.val_fraction=0.1.")
    return val


def build(root, image_size=64, in_channels=3, num_workers=2, val_fraction=None, val_list=None, split_seed=0,
          decoder="pil", mean=LEGACY["mean"], std=LEGACY["std"], augment=None, on_bad_file="error"):
    root = Path(root).expanduser()
    folder.check_decoder(decoder)
    folder.check_on_bad_file(on_bad_file)
    try:
        classes, _ = find_classes(root / "train")
    except (FileNotFoundError, NotADirectoryError):
        classes = []
    if not classes:
        raise UserError(f"data.root={str(root)!r} has no class folders in train/. Lay the images out as {LAYOUT} and "
                        "pass data.root=ROOT.")
    train = labelled(root / "train", classes)
    if not train:
        raise UserError(f"data.root={str(root)!r}: the class folders of train/ hold no images "
                        f"({', '.join(folder.IMAGE_EXTS)}). Lay the images out as {LAYOUT}.")
    train, val, split = splits.choose(root, train, validation(root, classes) if (root / "val").is_dir() else None,
                                      val_fraction, val_list, split_seed, "ROOT/val/CLASS/")
    norm = checked(mean, std, in_channels)
    args = dict(image_size=image_size, in_channels=in_channels, decoder=decoder, norm=norm, on_bad_file=on_bad_file)
    data = {"train": ClassFolder(list(train.values()), augment=compose(augment), **args),
            "val": ClassFolder(list(val.values()), **args), "classes": classes, "num_workers": num_workers,
            "normalisation": norm,
            **split, "model_args": {"num_classes": len(classes)}}
    test = root / "test"
    if test.is_dir():
        if any(p.is_dir() for p in test.iterdir()):
            data["test"] = ClassFolder(list(labelled(test, classes).values()), **args)
        else:
            data["test"] = ClassFolder([(p, None) for p in folder.image_files(test).values()], **args)
    return data
