"""Stand-alone prediction: one image in, one single-channel PNG of class indices out, at the image's size.

    python3 run.py --input x.jpg --output y.png --weights ckpt.pth

project-predict --solution copies this file into solution/ as run.py, the settings below filled in from the
trained model. It needs only torch, torchvision and Pillow (requirements.txt); the model class comes from its
module beside this file (MODEL), built with the arguments it was trained with. The image is resized to the
training size and normalised as in training; the class probabilities are resized bilinearly to the image's size,
then the argmax is taken. With TTA_FLIP the probabilities are first averaged with the mirror image's (its
left/right classes swapped back), as project-predict --tta flip does.
"""
import argparse
import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

try:
    from torchvision.transforms.v2.functional import pil_to_tensor, resize
except ImportError:  # torchvision before 0.15
    from torchvision.transforms.functional import pil_to_tensor, resize

# settings: project-predict writes each of these lines (project/evaluation/solution.py, render)
SOURCE = None  # the checkpoint these weights were taken from
MODEL = ("model_def", "Model")  # the module beside this file, and the model's class in it
MODEL_ARGS = {}
DROPPED_MODULES = []  # removed from the model by its last training phase
IMAGE_SIZE = 256  # the training image_size: every image is resized to IMAGE_SIZE x IMAGE_SIZE
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # the training normalisation: (pixel / 255 - MEAN) / STD
IN_CHANNELS = 3
DECODER = 'pil'  # how training decoded images: pil (Pillow) or torchvision (torchvision.io)
TTA_FLIP = False  # average with the mirror image's prediction, its left/right classes swapped back
FLIP_PAIRS = []  # class indices a horizontal flip exchanges


def load_model(weights):
    module, name = MODEL
    model = getattr(importlib.import_module(module), name)(**MODEL_ARGS)
    for dropped in DROPPED_MODULES:
        delattr(model, dropped)
    model.load_state_dict(torch.load(weights, map_location="cpu")["state_dict"])
    return model.eval()


def read(path):
    """uint8 (channels, height, width)"""
    if DECODER == "torchvision":
        from torchvision.io import ImageReadMode, decode_image

        return decode_image(str(path), mode=ImageReadMode.GRAY if IN_CHANNELS == 1 else ImageReadMode.RGB)
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("L" if IN_CHANNELS == 1 else "RGB"))


# project/data/normalisation.py's to_input, the one function training used: project-predict writes it here
def to_input(image, size, mean, std):
    """An image (C, H, W) or a batch (N, C, H, W), uint8 pixels or floats already on the 0-1 scale, as the model's
    input: resized to size x size (antialiased; no-op at that size), scaled to 0-1, then (x - mean) / std per
    channel. mean and std: a number or one per channel. Copied verbatim into the solution's run.py."""
    if tuple(image.shape[-2:]) != (int(size), int(size)):
        image = resize(image, [int(size), int(size)], antialias=True)
    x = image.float() if image.is_floating_point() else image.float() / 255
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict(model, image, device):
    """uint8 (channels, height, width) -> uint8 (height, width) class indices"""
    size = tuple(image.shape[-2:])
    x = to_input(image, IMAGE_SIZE, MEAN, STD)[None].to(device)
    probs = model(x).float().softmax(1)
    if TTA_FLIP:
        mirrored = model(x.flip(-1)).float().softmax(1).flip(-1)
        order = list(range(probs.shape[1]))
        for a, b in FLIP_PAIRS:
            order[a], order[b] = b, a
        probs = (probs + mirrored[:, order]) / 2
    probs = probs[0]
    if tuple(probs.shape[-2:]) != size:
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs.max(0).indices.to(torch.uint8).cpu()  # argmax's indices; torch's CPU argmax over dim 0 is 3-24x slower


def main():
    parser = argparse.ArgumentParser(description="One image in, its mask of class indices out.")
    parser.add_argument("--input", required=True, help="the image (jpg, png, ...)")
    parser.add_argument("--output", required=True, help="the mask PNG to write")
    parser.add_argument("--weights", default=str(Path(__file__).with_name("ckpt.pth")), help="ckpt.pth")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.weights).to(device)
    mask = predict(model, read(args.input), device)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy()).save(args.output)


if __name__ == "__main__":
    main()
