"""Your own segmentation data: ROOT/{train,val}/{images,masks}/NAME.{png,jpg}.

Masks are single-channel PNGs whose pixel values are class indices (as in CelebAMask-HQ), paired with the
image of the same NAME. Images are resized bilinearly and masks by nearest neighbour to `image_size`.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from project.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class SegFolder(Dataset):
    def __init__(self, split_dir: Path, image_size: int, in_channels: int):
        images = {p.stem: p for p in sorted((split_dir / "images").iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        masks = {p.stem: p for p in sorted((split_dir / "masks").iterdir()) if p.suffix.lower() == ".png"}
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            raise UserError(f"{split_dir}: {len(unpaired)} images or masks have no partner (e.g. {unpaired[:3]}); "
                            "every images/NAME.png|jpg needs a masks/NAME.png.")
        if not images:
            raise UserError(f"{split_dir}/images holds no .png or .jpg files.")
        self.pairs = [(images[k], masks[k]) for k in sorted(images)]
        self.size, self.mode = [image_size, image_size], "L" if in_channels == 1 else "RGB"

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image_path, mask_path = self.pairs[i]
        image = TF.to_tensor(TF.resize(Image.open(image_path).convert(self.mode), self.size))
        mask = TF.resize(Image.open(mask_path), self.size, interpolation=TF.InterpolationMode.NEAREST)
        image = TF.normalize(image, [0.5] * image.shape[0], [0.25] * image.shape[0])
        return image, torch.from_numpy(np.array(mask, dtype=np.int64))


def build(root, num_classes, in_channels=3, image_size=128, ignore_index=255, num_workers=2):
    root = Path(root).expanduser()
    missing = [str(root / s / d) for s in ("train", "val") for d in ("images", "masks") if not (root / s / d).is_dir()]
    if missing:
        raise UserError(f"data.root={str(root)!r} is not a segmentation folder: missing {', '.join(missing)}. "
                        "Lay it out as ROOT/{train,val}/{images,masks}/NAME.{png,jpg} and pass data.root=ROOT.")
    return {"train": SegFolder(root / "train", image_size, in_channels),
            "val": SegFolder(root / "val", image_size, in_channels),
            "classes": [str(i) for i in range(num_classes)], "num_workers": num_workers,
            "model_args": {"num_classes": num_classes, "in_channels": in_channels}}
