"""project-evaluate and trainer.test_after_fit on a generated face folder with a labelled test/ whose images are
not the training size (some not even square): the scores must equal a direct numpy computation of both
definitions on the same predictions, made at each mask's original size."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, run_cli
from project.data import fake_faces
from project.commands import compare
from project.commands import evaluate

TRAIN = ["data=celebamask", "data.val_fraction=0.2", "data.image_size=32", "model.base_channels=4",
         "trainer.max_epochs=3", "trainer.batch_size=4", "optimizer.lr=0.02", "trainer.num_threads=1",
         "data.num_workers=0"]
SIZES = [(64, 64), (48, 80), (64, 64), (40, 56)]  # (H, W) of the test masks: two neither 64 nor square
FLIP_PAIRS = [(4, 5), (6, 7), (8, 9)]
NOW = ["data.num_workers=0"]  # evaluation overrides: read files in this process


def faces(root: Path, labelled_test: bool) -> Path:
    """fake_faces' folder; with labelled_test, test/masks/ holds the masks of its test images (the same random
    draws again) and test images 1 and 3 are resized with their masks to non-square sizes."""
    fake_faces.write(root, train=20, test=4, size=64, seed=0)
    if labelled_test:
        rng = np.random.default_rng(0)
        for _ in range(20):
            fake_faces.face(rng, 64)  # the training faces come first in write()'s draws
        (root / "test" / "masks").mkdir()
        for i, (h, w) in enumerate(SIZES):
            image, mask = fake_faces.face(rng, 64)
            if (h, w) != (64, 64):
                image, mask = image.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.NEAREST)
                image.save(root / "test" / "images" / f"{i:04d}.jpg", quality=90)
            mask.save(root / "test" / "masks" / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run on a folder with a labelled test/ (logger=wandb, offline: its summary gets the test score)."""
    cwd = tmp_path_factory.mktemp("evaluate")
    root = faces(cwd / "faces", labelled_test=True)
    proc = run_cli(*TRAIN, f"data.root={root}", "logger=wandb", f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return {"dir": cwd / "run", "root": root, "cwd": cwd, "log": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    return faces(tmp_path_factory.mktemp("unlabelled") / "faces", labelled_test=False)


def direct(run_dir: Path, split: str, tta: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(file, prediction, mask) per image, computed here without project.commands: the saved weights, the image
    resized to 32x32 and normalised as in training, softmax, the probabilities resized bilinearly to the mask's
    size, argmax."""
    from torchvision.transforms import v2

    from project import load_model

    model, cfg = load_model(run_dir)
    root = Path(cfg.data.root)
    if split == "test":
        names = sorted(p.stem for p in (root / "test" / "images").iterdir())
        folder = root / "test"
    else:
        names = (run_dir / "split" / "val.txt").read_text().split()
        folder = root / "train"
    out = []
    for name in names:
        image = torch.from_numpy(np.array(Image.open(folder / "images" / f"{name}.jpg").convert("RGB"))).permute(2, 0, 1)
        mask = np.array(Image.open(folder / "masks" / f"{name}.png"), dtype=np.int64)
        x = ((v2.functional.resize(image, [32, 32], antialias=True).float() / 255 - 0.5) / 0.25)[None]
        with torch.no_grad():
            probs = model(x).softmax(1)
            if tta:
                mirrored = model(x.flip(-1)).softmax(1).flip(-1)
                order = list(range(19))
                for a, b in FLIP_PAIRS:
                    order[a], order[b] = b, a
                probs = (probs + mirrored[:, order]) / 2
        probs = F.interpolate(probs, size=mask.shape, mode="bilinear", align_corners=False)
        out.append((f"{name}.jpg", probs.argmax(1)[0].numpy(), mask))
    return out


def numpy_scores(predictions, n: int = 19) -> dict:
    """Both definitions, as the benchmark note reads them."""
    confusion = np.zeros((n, n), dtype=np.int64)
    per_image = {}
    for name, pred, gt in predictions:
        valid = gt != 255
        np.add.at(confusion, (gt[valid], pred[valid]), 1)
        f1s = []
        for c in np.unique(gt[valid]):
            tp = np.sum((pred == c) & (gt == c) & valid)
            precision, recall = tp / (np.sum((pred == c) & valid) + 1e-7), tp / (np.sum(gt == c) + 1e-7)
            f1s.append(2 * precision * recall / (precision + recall + 1e-7))
        per_image[name] = float(np.mean(f1s))
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    return {"dataset_f1": float(np.nanmean(f1[1:])), "image_f1": float(np.mean(list(per_image.values()))),
            "miou": float(np.nanmean(iou)), "pixel_acc": float(tp.sum() / confusion.sum()), "f1": f1, "iou": iou,
            "per_image": per_image, "confusion": confusion}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_test_scores_at_original_size_equal_a_direct_computation(run, capsys):
    assert evaluate.main([str(run["dir"]), "--split", "test", *NOW]) == 0
    out = capsys.readouterr().out
    result = json.loads((run["dir"] / "eval" / "test-best.json").read_text())
    want = numpy_scores(direct(run["dir"], "test"))
    assert 0.05 < want["dataset_f1"] < 0.95, "the model predicts something but not everything: a real test"
    for metric in ("dataset_f1", "image_f1", "miou", "pixel_acc"):
        assert result["metrics"][metric] == pytest.approx(want[metric], abs=1e-9), metric
    # every pixel of every original-size mask was scored (not 4 x 32 x 32)
    assert np.array_equal(np.array(result["confusion_matrix"]), want["confusion"])
    assert sum(map(sum, result["confusion_matrix"])) == sum(h * w for h, w in SIZES)
    images = read_csv(run["dir"] / "eval" / "test-best-images.csv")
    assert [r["file"] for r in images] == [f"{i:04d}.jpg" for i in range(4)]
    for row in images:
        assert float(row["image_f1"]) == pytest.approx(want["per_image"][row["file"]], abs=1e-6)
    assert "original size" in out and "dataset_f1" in out and "image_f1" in out
    assert "<- main (loss.metric)" in next(line for line in out.splitlines() if line.strip().startswith("dataset_f1"))


def test_the_per_class_table_and_the_json(run, capsys):
    assert evaluate.main([str(run["dir"]), *NOW]) == 0  # the val split, the run's own
    out = capsys.readouterr().out
    result = json.loads((run["dir"] / "eval" / "val-best.json").read_text())
    want = numpy_scores(direct(run["dir"], "val"))
    best = torch.load(run["dir"] / "checkpoints" / "best_model.pth")
    assert {"split", "checkpoint", "checkpoint_path", "epoch", "weights", "images", "scored_at", "main_metric",
            "metrics", "definitions", "per_class", "confusion_matrix", "tta", "files"} <= set(result)
    assert (result["split"], result["checkpoint"], result["weights"], result["tta"]) == ("val", "best", "model", None)
    assert result["epoch"] == best["best_epoch"] and result["images"] == 4 == len(want["per_image"])
    assert result["split_how"].startswith("data.val_fraction=0.2") and result["split_note"] is None
    assert result["main_metric"] == "dataset_f1" and set(result["definitions"]) == set(result["metrics"])
    assert result["scored_at"].startswith("original size")
    assert [r["class"] for r in result["per_class"]] == best["config"]["data"]["classes"]
    assert result["training_val"]["value"] == best["val_f_score"]
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("    ") and line.split()}
    for c, row in enumerate(result["per_class"]):
        for key, values in (("f1", want["f1"]), ("iou", want["iou"])):
            if np.isnan(values[c]):
                assert row[key] is None  # null in the JSON: neither in the truth nor predicted
            else:
                assert row[key] == pytest.approx(values[c], abs=1e-9)
        shown = lines[row["class"]]  # the console table: class, f1, iou, pixels
        assert shown[1:] == ["-" if row["f1"] is None else f"{row['f1']:.4f}",
                             "-" if row["iou"] is None else f"{row['iou']:.4f}", str(row["pixels"])]
    with Image.open(run["dir"] / "eval" / "val-best-confusion.png") as png:
        assert png.format == "PNG" and min(png.size) >= 400
    assert sorted(p.name for p in (run["dir"] / "eval").glob(".*")) == []  # no temp files left


def test_flip_tta_and_image_f1_as_the_main_metric(run, tmp_path, capsys):
    assert evaluate.main([str(run["dir"]), "--split", "test", "--tta", "flip", "--out", str(tmp_path),
                          "loss.metric=image_f1", *NOW]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "test-best.json").read_text())
    want = numpy_scores(direct(run["dir"], "test", tta=True))
    assert result["tta"] == "flip" and "flip TTA" in out
    assert result["metrics"]["dataset_f1"] == pytest.approx(want["dataset_f1"], abs=1e-9)
    assert result["metrics"]["image_f1"] == pytest.approx(want["image_f1"], abs=1e-9)
    assert result["main_metric"] == "image_f1"
    assert "<- main" in next(line for line in out.splitlines() if line.strip().startswith("image_f1"))


def test_test_after_fit_scores_the_best_weights_once(run):
    """results.json, the final log line, W&B's summary, and compare's column, all the same score."""
    results = json.loads((run["dir"] / "results.json").read_text())
    want = numpy_scores(direct(run["dir"], "test"))
    assert results["split"] == "test" and results["checkpoint"] == "best"
    assert results["source"] == "trainer.test_after_fit"
    assert results["metrics"]["dataset_f1"] == pytest.approx(want["dataset_f1"], abs=1e-9)
    assert results["metrics"]["image_f1"] == pytest.approx(want["image_f1"], abs=1e-9)
    last = [line for line in run["log"].splitlines() if "[project.recipe]" in line][-1]
    assert f"dataset_f1 {results['metrics']['dataset_f1']:.4f}" in last and "original size" in last
    assert "Test (4 images, best weights of epoch" in last
    from test_wandb import wandb_run

    summary = wandb_run(run["dir"] / "wandb")["summary"]
    assert summary["test/dataset_f1"] == pytest.approx(results["metrics"]["dataset_f1"])
    assert summary["test/image_f1"] == pytest.approx(results["metrics"]["image_f1"])
    table = compare.compare([str(run["dir"])], out=run["cwd"] / "cmp")["table"]
    row = dict(zip(table[0], table[1]))
    assert row["test dataset_f1"] == f"{results['metrics']['dataset_f1']:.4f}"


def test_a_sweep_gets_the_score_as_a_column_and_a_heatmap(run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    # two jobs over model.dropout; a one-value list makes it a 2 x 1 grid (seed would not: seeds are replicates)
    run_cli("-m", "model.dropout=0.1,0.2", "optimizer.weight_decay=choice(0.0001)", *TRAIN, "trainer.max_epochs=2",
            f"data.root={run['root']}", "logger=csv", "trainer.test_after_fit=false", f"hydra.sweep.dir={sweep}",
            cwd=tmp_path)
    assert not (sweep / "0" / "results.json").exists()
    assert evaluate.main([str(sweep), "--split", "test", *NOW]) == 0
    out = capsys.readouterr().out
    scores = {job: json.loads((sweep / job / "eval" / "test-best.json").read_text())["metrics"]["dataset_f1"]
              for job in ("0", "1")}
    assert scores["0"] != scores["1"]
    text = (sweep / "comparison.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    table = [dict(zip(rows[0], r)) for r in rows[2:4]]
    assert {r["run"]: r["test dataset_f1"] for r in table} == {j: f"{s:.4f}" for j, s in scores.items()}
    assert "test dataset_f1 per grid cell" in text and "at each mask's original size" in text
    grid = text.split("test dataset_f1 per grid cell")[1]
    assert f"{scores['0']:.4f}" in grid and f"{scores['1']:.4f}" in grid
    assert (sweep / "heatmap_test_dataset_f1.png").is_file() and "comparison.md" in out


def test_a_foreign_file_with_overrides_scores_as_the_run(run, tmp_path, capsys):
    """A bare state dict another script saved: built from model=... data=... overrides, the same scores."""
    weights = torch.load(run["dir"] / "checkpoints" / "best_model.pth")["model_state_dict"]
    torch.save(weights, tmp_path / "theirs.pth")
    assert evaluate.main([str(tmp_path / "theirs.pth"), "--split", "test", "--data-root", str(run["root"]),
                          "model=unet", "model.base_channels=4", "data=celebamask", "data.image_size=32",
                          "data.val_fraction=0.2", *NOW]) == 0
    theirs = json.loads((tmp_path / "eval" / "test-theirs.json").read_text())
    ours = json.loads((run["dir"] / "results.json").read_text())
    assert theirs["metrics"] == pytest.approx(ours["metrics"], abs=1e-12)


def test_bad_input_is_one_paragraph_and_exit_2(run, unlabelled, tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "project.commands.evaluate", str(run["dir"]), "--split", "test",
                           "--data-root", str(unlabelled), *NOW], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "holds images without labels" in message and "--split val" in message and str(unlabelled) in message

    def fails(*args) -> str:
        assert evaluate.main([*map(str, args), *NOW]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: ") and "Traceback" not in err
        return " ".join(err.split())

    assert f"--data-root {tmp_path / 'nowhere'} does not exist" in fails(run["dir"], "--data-root", tmp_path / "nowhere")
    message = fails(run["dir"], f"data.root={tmp_path / 'moved'}")  # the run's folder is gone
    assert str(tmp_path / "moved") in message and "Pass --data-root DIR" in message
    no_test = fake_faces.write(tmp_path / "no_test", train=20, test=0)
    shutil.rmtree(no_test / "test")
    assert "has no test/ folder" in fails(run["dir"], "--split", "test", "--data-root", no_test)
    assert "--split train is unknown" in fails(run["dir"], "--split", "train")
    assert not list(tmp_path.rglob("*.json"))  # nothing written


def test_a_live_run_dir_needs_out(run, tmp_path, capsys):
    """While a process holds the run dir (it is training), nothing else writes there: --out is the way."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR"
                               " | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(120)", str(run["dir"] / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert evaluate.main([str(run["dir"]), "--checkpoint", "last", *NOW]) == 2
        assert "is still training" in capsys.readouterr().err
        assert not (run["dir"] / "eval" / "val-last.json").exists()
        assert evaluate.main([str(run["dir"]), "--checkpoint", "last", "--out", str(tmp_path), *NOW]) == 0
        assert json.loads((tmp_path / "val-last.json").read_text())["checkpoint"] == "last"
    finally:
        holder.kill()
        holder.wait()


def test_classification_precision_and_recall_per_class(tmp_path, capsys):
    """image_folder data with a labelled test/ (class folders, images of two sizes): accuracy and precision and
    recall per class from the confusion matrix of the predictions, also after training (results.json)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for name, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
            (tmp_path / "cls" / split / name).mkdir(parents=True)
            for i in range(n):
                size = (56, 40) if i % 2 else (48, 48)
                pixels = np.clip(np.array(colour) + rng.normal(0, 60, (*size[::-1], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "cls" / split / name / f"{i}.png")
    run_dir = tmp_path / "run"
    run_cli("data=image_folder", f"data.root={tmp_path / 'cls'}", "data.val_fraction=0.25", "data.image_size=16",
            "model=resnet", "trainer.max_epochs=1", "trainer.batch_size=8", "trainer.num_threads=1",
            "data.num_workers=0", "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert evaluate.main([str(run_dir), "--split", "test", *NOW]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "eval" / "test-best.json").read_text())
    rows = read_csv(run_dir / "eval" / "test-best-images.csv")
    assert len(rows) == 8 and {r["label"] for r in rows} == {"cat", "dog"}
    truth, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
    assert result["metrics"]["acc"] == pytest.approx(np.mean([a == b for a, b in zip(truth, predicted)]))
    for row in result["per_class"]:
        c = row["class"]
        tp = sum(a == b == c for a, b in zip(truth, predicted))
        assert row["recall"] == pytest.approx(tp / truth.count(c))
        assert row["precision"] == (pytest.approx(tp / predicted.count(c)) if predicted.count(c) else None)
    assert result["main_metric"] == "acc" and "precision" in out and "recall" in out
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == result["metrics"]


def test_a_test_split_that_cannot_be_scored_does_not_fail_the_trained_run(tmp_path):
    root = faces(tmp_path / "faces", labelled_test=True)
    bad = np.array(Image.open(root / "test" / "masks" / "0002.png"))
    bad[0, 0] = 99  # neither a class index nor ignore_index
    Image.fromarray(bad).save(root / "test" / "masks" / "0002.png")
    proc = run_cli(*TRAIN, "trainer.max_epochs=1", f"data.root={root}", "logger=csv",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "The test split could not be scored after training" in log and "0002.png holds the value 99" in log
    assert f"project-evaluate {tmp_path / 'run'} --split test" in log
    assert (tmp_path / "run" / "checkpoints" / "final_model.pth").is_file()
    assert not (tmp_path / "run" / "results.json").exists()
