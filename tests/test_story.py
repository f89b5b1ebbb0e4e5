"""The README's story end to end, in real processes at a small size: their script's best_model.pth (inputs
pixel / 255, epochs from 0, numpy scalars, curves in `history`), continued with their class and their
normalisation stated on a folder with a val_fraction split and face augmentation, scored on equal terms, predicted
and zipped with the benchmark's solution/. Each path's use of the normalisation: tests/test_normalisation.py."""
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

from conftest import ROOT, load, run_cli
from project.checkpoints import files as checkpoint
from project.data import fake_faces


def test_their_model_and_file_to_a_submission(tmp_path):
    faces = fake_faces.write(tmp_path / "faces", train=40, test=4, size=48)
    env = {"PYTHONPATH": f"{ROOT / 'examples'}{os.pathsep}{ROOT}"}
    mine = {**os.environ, **env}
    subprocess.run([sys.executable, str(ROOT / "examples" / "their_pkg" / "train_their_way.py"), str(faces), "--out",
                    str(tmp_path / "their_best_model.pth"), "--epochs", "2", "--size", "32"], check=True, env=mine,
                   capture_output=True, timeout=600)
    theirs = checkpoint.read(tmp_path / "their_best_model.pth")  # safe load, their numpy best_f_score allowed
    assert set(theirs["history"]) >= {"train_loss", "val_f_score", "lr"}

    tool = lambda *args: subprocess.run([sys.executable, "-m", *args], env=mine, cwd=tmp_path, capture_output=True,
                                        text=True, timeout=600)
    analyzed = tool("project.commands.analyze", str(tmp_path / "their_best_model.pth"))
    assert analyzed.returncode == 0 and "monitor val f_score" in analyzed.stdout, analyzed.stderr

    run = tmp_path / "continued"
    proc = run_cli("data=celebamask", f"data.root={faces}", "data.val_fraction=0.1", "data.image_size=32",
                   "data.mean=[0,0,0]", "data.std=[1,1,1]",  # their script feeds pixel / 255
                   "augment=face_parsing", "model=custom", "model._target_=their_pkg.their_model.MicroSegFormer",
                   "model.dropout=0.25", "resume=reset_optimizer", f"resume.checkpoint={tmp_path / 'their_best_model.pth'}",
                   "loss.metric=image_f1", "trainer.max_epochs=1", "trainer.num_threads=1", "logger=csv",
                   f"hydra.run.dir={run}", cwd=tmp_path, env_extra=env)
    out = proc.stdout
    assert "takes no in_channels argument" in out and "flip pairs: l_eye/r_eye, l_brow/r_brow, l_ear/r_ear" in out
    assert "Starting weights, scored here: val image_f_score" in out and "computed by another script" in out
    best = load(run / "checkpoints" / "best_model.pth")
    assert best["monitor"] == "image_f_score" and best["best_image_f_score"] >= best["start_score"]["score"]

    typed = "model._target_=their_pkg.their_model.MicroSegFormer"  # a file's config never picks the class alone
    scored = tool("project.commands.evaluate", str(run), typed)
    assert scored.returncode == 0 and "image_f1" in scored.stdout and "<- main (loss.metric)" in scored.stdout, \
        scored.stdout + scored.stderr
    predicted = tool("project.commands.predict", str(run), "--images", str(faces / "test" / "images"), "--out",
                     str(tmp_path / "masks"), "--tta", "flip", "--zip", str(tmp_path / "submission.zip"), "--solution",
                     "--max-params", "1821084", typed)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    names = zipfile.ZipFile(tmp_path / "submission.zip").namelist()
    assert sorted(n for n in names if n.startswith("masks/") and n.endswith(".png")) == \
        [f"masks/{i:04d}.png" for i in range(4)]
    assert "solution/their_model.py" in names and "solution/ckpt.pth" in names
    mask = np.array(Image.open(tmp_path / "masks" / "0000.png"))
    assert mask.shape == (48, 48) and mask.max() < 19  # the image's own size, class indices
