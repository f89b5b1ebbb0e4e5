"""project-predict on real files: masks read back equal the argmax at each image's own size computed here
directly, flip TTA on a model whose output is known, a file that is not an image, the zip's layout, and the
solution's run.py run alone in a fresh process giving the same mask."""
import csv
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from conftest import ROOT, run_cli
from project import load_model
from project.data import fake_faces
from project.commands import predict

PREDICT = Path(sys.executable).parent / "project-predict"  # the console script setup.cfg installs
FLIP_PAIRS = [[4, 5], [6, 7], [8, 9]]


def run_predict(*args, cwd: Path, pythonpath: str = "", module: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "project.commands.predict"] if module else [str(PREDICT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)}
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def left_over(folder: Path) -> list[str]:
    """Partial files or folders a command left behind."""
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def faces(work):
    return fake_faces.write(work / "faces", train=24, test=4, size=48)


@pytest.fixture(scope="module")
def run_dir(work, faces):
    """A tiny U-Net trained 3 epochs on the generated faces at 32 px: enough to predict several classes."""
    run_dir = work / "run"
    run_cli("data=celebamask", f"data.root={faces}", "data.val_fraction=0.2", "data.image_size=32",
            "model.base_channels=4", "trainer.max_epochs=3", "optimizer.lr=0.02", "trainer.batch_size=4",
            "logger=csv", "trainer.num_threads=1", f"hydra.run.dir={run_dir}", cwd=work)
    return run_dir


@pytest.fixture(scope="module")
def images(work, faces):
    """The 4 test faces (48x48), a non-square one, 40 high and 64 wide, and a text file."""
    folder = work / "images"
    shutil.copytree(faces / "test" / "images", folder)
    wide = Image.open(faces / "train" / "images" / "0000.jpg").resize((64, 40), Image.BILINEAR)
    wide.save(folder / "wide.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image: skipped, and said so")
    return folder


@pytest.fixture(scope="module")
def predicted(work, run_dir, images):
    """One project-predict run, as the benchmark's user would: flip TTA, the zip with the solution, the size limit."""
    proc = run_predict(run_dir, "--images", images, "--out", work / "masks", "--tta", "flip", "--zip",
                       work / "submission.zip", "--solution", "--max-params", "1821084", cwd=work, module=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def direct_argmax(model, path: Path, image_size: int, tta: bool) -> np.ndarray:
    """The mask computed here: resize to the training size, (x/255 - 0.5)/0.25, softmax (with the mirror's,
    flipped and pair-swapped back), bilinear to the original size, argmax."""
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    x = ((v2.functional.resize(image, [image_size] * 2, antialias=True).float() / 255 - 0.5) / 0.25)[None]
    with torch.no_grad():
        probs = model(x).softmax(1)
        if tta:
            order = list(range(probs.shape[1]))
            for a, b in FLIP_PAIRS:
                order[a], order[b] = b, a
            probs = (probs + model(x.flip(-1)).softmax(1).flip(-1)[:, order]) / 2
    probs = F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return probs[0].argmax(0).numpy()


def test_progress_is_plain_lines_in_a_log(predicted):
    """stderr is a pipe here, as in a SLURM log: lines, never a bar redrawn with carriage returns."""
    assert "\r" not in predicted.stderr
    assert "predict: 5/5 img (100%)" in predicted.stderr, predicted.stderr


def test_masks_are_the_argmax_at_each_images_own_size(predicted, work, run_dir, images):
    masks = work / "masks"
    assert sorted(p.name for p in masks.iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png", "wide.png"]
    model, cfg = load_model(run_dir)
    classes_seen = set()
    for image in sorted(images.glob("*.jpg")):
        mask = Image.open(masks / f"{image.stem}.png")
        assert mask.mode == "L" and mask.size == Image.open(image).size
        got = np.array(mask)
        np.testing.assert_array_equal(got, direct_argmax(model, image, cfg.data.image_size, tta=True), image.name)
        classes_seen |= set(np.unique(got).tolist())
    assert len(classes_seen) >= 3, classes_seen  # a model that predicts several classes: the comparison means something
    assert "Wrote 5 masks" in predicted.stdout and "7,639 parameters" in predicted.stdout, predicted.stdout
    assert "Skipped 1 file not an image by its extension: notes.txt" in predicted.stdout


def test_a_non_square_image_keeps_its_size(predicted, work):
    mask = Image.open(work / "masks" / "wide.png")
    assert mask.size == (64, 40) and np.array(mask).shape == (40, 64)


def test_zip_holds_masks_at_its_root_and_the_solution(predicted, work):
    with zipfile.ZipFile(work / "submission.zip") as z:
        assert z.namelist() == ["masks/", "masks/0000.png", "masks/0001.png", "masks/0002.png", "masks/0003.png",
                                "masks/wide.png", "solution/", "solution/ckpt.pth", "solution/requirements.txt",
                                "solution/run.py", "solution/unet.py"]
        for name in ("0000.png", "wide.png"):
            assert z.read(f"masks/{name}") == (work / "masks" / name).read_bytes()
        assert z.read("solution/requirements.txt").decode().split() == ["torch", "torchvision", "pillow"]
        z.extract("solution/ckpt.pth", work / "ckpt")
    saved = torch.load(work / "ckpt" / "solution" / "ckpt.pth")
    model, _ = load_model(work / "run")
    assert list(saved) == ["state_dict"]
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in model.state_dict().items())
    assert "solution/ (ckpt.pth, requirements.txt, run.py, unet.py" in predicted.stdout
    assert "agrees on 100.00% of the pixels" in predicted.stdout, predicted.stdout


def test_solution_run_py_alone_gives_the_same_masks(predicted, work, images, tmp_path):
    with zipfile.ZipFile(work / "submission.zip") as z:
        z.extractall(tmp_path)
    solution = tmp_path / "solution"
    for name in ("project", "hydra", "omegaconf"):  # the framework cannot be imported: only torch, torchvision, Pillow
        (solution / f"{name}.py").write_text(f"raise ImportError('{name} is not on the grading machine')\n")
    env = {**os.environ, "PYTHONPATH": ""}
    for image in (images / "0001.jpg", images / "wide.jpg"):
        out = tmp_path / f"{image.stem}.png"
        proc = subprocess.run([sys.executable, "run.py", "--input", str(image), "--output", str(out), "--weights",
                               "ckpt.pth"], cwd=solution, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        mask = Image.open(out)
        assert mask.mode == "L"
        np.testing.assert_array_equal(np.array(mask), np.array(Image.open(work / "masks" / f"{image.stem}.png")))
    run_py = (solution / "run.py").read_text()
    for line in ("IMAGE_SIZE = 32", "MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]", "TTA_FLIP = True",
                 "FLIP_PAIRS = [[4, 5], [6, 7], [8, 9]]",
                 "MODEL_ARGS = {'base_channels': 4, 'depth': 2, 'dropout': 0.1, 'num_classes': 19, 'in_channels': 3}"):
        assert line in run_py


KNOWN_NETS = '''
import torch
from torch import nn


class RightHalf(nn.Module):
    """Whatever it sees: class 1 on the right half (logit 10), all classes equal on the left half."""

    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, self.num_classes, h, w)
        logits[:, 1, :, w // 2:] = self.scale
        return logits


class Brightness(nn.Module):
    """Two classes (dark, light): the light one's logit is 2 x the mean normalised brightness."""

    def __init__(self, num_classes=2, in_channels=3):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), self.scale * m], 1)
'''

USES_PROJECT = '''
from torch import nn

from project.models.unet import conv_block


class Borrowing(nn.Module):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.body = conv_block(in_channels, 4)
        self.head = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))
'''


@pytest.fixture(scope="module")
def own_nets(work):
    """A module of the user's own nets on PYTHONPATH, and their bare state dicts as another script saves them."""
    src = work / "src"
    src.mkdir()
    (src / "known_nets.py").write_text(KNOWN_NETS)
    (src / "uses_project.py").write_text(USES_PROJECT)
    sys.path.insert(0, str(src))
    try:
        import known_nets
        import uses_project
        torch.save(known_nets.RightHalf().state_dict(), work / "right_half.pth")
        torch.save(known_nets.Brightness().state_dict(), work / "brightness.pth")
        torch.save(uses_project.Borrowing().state_dict(), work / "borrowing.pth")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("known_nets", None)
        sys.modules.pop("uses_project", None)
    return src


def three_class_data(faces) -> list[str]:
    return ["data=seg_folder", f"data.root={faces}", "data.val_fraction=0.2", "data.num_classes=3",
            "data.flip_pairs=[[1,2]]", "data.image_size=16"]


def test_flip_tta_averages_the_mirror_with_paired_classes_swapped_back(work, faces, own_nets, tmp_path):
    """RightHalf says class 1 on the right half, a tie on the left. Its mirror's answer, flipped back, says class 1
    on the left; swapped back (pair 1-2) that is class 2. Averaged: left 2 (1/6, 1/6, 2/3), right 1 (1/6, 2/3, 1/6).
    Without TTA the left half is a tie, whose argmax is class 0."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    overrides = ["model=custom", "model._target_=known_nets.RightHalf", *three_class_data(faces)]
    for tta, left in ((["--tta", "flip"], 2), ([], 0)):
        out = tmp_path / f"out{left}"
        proc = run_predict(work / "right_half.pth", "--images", folder, "--out", out, *tta, "--palette", *overrides,
                           cwd=tmp_path, pythonpath=str(own_nets))
        assert proc.returncode == 0, proc.stderr
        mask = Image.open(out / "a.png")
        want = np.array([[left] * 8 + [1] * 8] * 16)
        np.testing.assert_array_equal(np.array(mask), want, f"TTA {tta}")
        # --palette: mode P, the same indices, and a palette of the data's 3 colours only (no colours given:
        # the fixed distinct palette)
        assert mask.mode == "P" and mask.getpalette() == [0, 0, 0, 128, 0, 0, 0, 128, 0]


def test_classification_writes_predictions_csv_in_file_order(work, own_nets, tmp_path):
    """Brightness on a black, a white and a grey image; --tta flip keeps a classifier's scores (the mirror of a
    constant image scores the same: the class order is not flipped)."""
    root = tmp_path / "data"
    for name, value in (("dark", 20), ("light", 230)):
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (value,) * 3).save(root / "train" / name / f"{i}.png")
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in (("b.png", 255), ("a.png", 0), ("c.png", 128)):
        Image.new("RGB", (12, 10), (value,) * 3).save(folder / name)
    proc = run_predict(work / "brightness.pth", "--images", folder, "--out", tmp_path / "out", "--tta", "flip",
                       "model=custom", "model._target_=known_nets.Brightness", "data=image_folder",
                       f"data.root={root}", "data.val_fraction=0.5", "data.image_size=8", cwd=tmp_path,
                       pythonpath=str(own_nets))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert [r["class"] for r in rows] == ["dark", "light", "light"]
    for row, value in zip(rows, (0, 255, 128)):
        light = 1 / (1 + math.exp(-2 * (value / 255 - 0.5) / 0.25))
        assert float(row["p_light"]) == pytest.approx(light, abs=2e-6)
        assert float(row["p_dark"]) == pytest.approx(1 - light, abs=2e-6)


def test_a_file_that_is_not_an_image_is_named_and_nothing_is_written(work, run_dir, images, tmp_path):
    # text named .jpg: found before anything is predicted; a truncated JPEG: while predicting, after other masks
    good = images / "0000.jpg"
    half = good.read_bytes()[:good.stat().st_size // 2]
    for name, content in (("notes.jpg", b"not an image\n"), ("cut.jpg", half)):
        folder = tmp_path / name.split(".")[0]
        shutil.copytree(images, folder)
        (folder / name).write_bytes(content)
        (folder / "readme.txt").write_text("skipped by extension")
        proc = run_predict(run_dir, "--images", folder, "--out", tmp_path / "out", "--zip", tmp_path / "s.zip",
                           "--batch-size", "2", cwd=tmp_path)  # cut.jpg comes after 2 batches of masks
        assert proc.returncode == 2, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith(f"Error: {folder / name} is not an image that can be read"), proc.stderr
        assert "Remove it from the folder or replace it" in error
        assert not (tmp_path / "out").exists() and not (tmp_path / "s.zip").exists()
        assert left_over(tmp_path) == []


def test_solution_refuses_a_model_whose_source_imports_the_project(work, faces, own_nets, images, tmp_path):
    proc = run_predict(work / "borrowing.pth", "--images", images, "--out", tmp_path / "out", "--zip",
                       tmp_path / "s.zip", "--solution", "model=custom", "model._target_=uses_project.Borrowing",
                       *three_class_data(faces), cwd=tmp_path, pythonpath=str(own_nets))
    assert proc.returncode == 2, proc.stderr
    assert (f"Error: The model's source {own_nets / 'uses_project.py'} imports project.models.unet, which the "
            "solution cannot carry") in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refusals_name_the_value_and_write_nothing(run_dir, images, tmp_path, capsys):
    """In-process main(): a model over --max-params, an --out that holds files, --solution without --zip."""
    cases = [
        (["--max-params", "7000"], "The model has 7,639 parameters, over --max-params 7,000 (by 639)"),
        (["--solution"], "--solution adds solution/ to the zip: give --zip FILE too"),
        (["--batch-size", "0"], "--batch-size 0: predict at least 1 image at a time"),
    ]
    for extra, message in cases:
        assert predict.main([str(run_dir), "--images", str(images), "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"Error: {message}"), err
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"")
    assert predict.main([str(run_dir), "--images", str(images), "--out", str(tmp_path / "full")]) == 2
    assert capsys.readouterr().err.startswith(f"Error: --out {tmp_path / 'full'} already holds files")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["old.png"]
