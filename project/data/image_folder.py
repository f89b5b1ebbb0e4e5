"""Your own classification data: ROOT/{train,val}/CLASS/*.{png,jpg,...} (torchvision's ImageFolder layout).

Images are converted to `in_channels` channels (grayscale or RGB, whatever the files are), resized to
`image_size` and normalised. The classes are the folder names of train/ and must be the same in val/.
"""
from pathlib import Path

from torchvision import datasets, transforms

from project.errors import UserError


class ToMode:
    """PIL convert as a picklable transform (DataLoader workers)."""

    def __init__(self, mode):
        self.mode = mode

    def __call__(self, image):
        return image.convert(self.mode)


def build(root, image_size=64, in_channels=3, num_workers=2):
    root = Path(root).expanduser()
    layout = "ROOT/{train,val}/CLASS/IMAGE.png|jpg"
    for split in ("train", "val"):
        if not (root / split).is_dir() or not any(p.is_dir() for p in (root / split).iterdir()):
            raise UserError(f"data.root={str(root)!r} has no class folders in {split}/. Lay the images out as "
                            f"{layout} and pass data.root=ROOT.")
    transform = transforms.Compose([
        ToMode("L" if in_channels == 1 else "RGB"), transforms.Resize((image_size, image_size)),
        transforms.ToTensor(), transforms.Normalize([0.5] * in_channels, [0.25] * in_channels)])
    try:
        train, val = (datasets.ImageFolder(root / s, transform=transform) for s in ("train", "val"))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"data.root={str(root)!r}: {e}. Lay the images out as {layout}.") from None
    if train.classes != val.classes:
        raise UserError(f"data.root={str(root)!r}: train/ has classes {train.classes} but val/ has {val.classes}; "
                        "both need the same class folders.")
    return {"train": train, "val": val, "classes": train.classes, "num_workers": num_workers,
            "model_args": {"num_classes": len(train.classes)}}
