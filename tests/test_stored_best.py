"""One file another script wrote, one stored best: a file holding both best_f_score and best_image_f_score,
opened with loss.metric=image_f1, shows best_image_f_score through load_model's loader, project-inspect,
project-evaluate and a continuation (its log, lineage and W&B summary), because all of them open it through
project/checkpoints/opening.py (issue 23)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT, load, run_cli
from project import tasks
from project.checkpoints import loading
from project.commands import evaluate, inspect
from project.data import fake_faces
from test_wandb import wandb_env, wandb_run  # noqa: F401  (wandb_env: a fixture)

BUILD = ["model=unet", "model.base_channels=4", "data=celebamask", "data.image_size=32", "data.val_fraction=0.2",
         "data.num_workers=0"]
IMAGE_F1 = "loss.metric=image_f1"
DATASET, IMAGE = 0.6125, 0.7375  # their two stored bests: different numbers


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    """Another script's dict (epoch 7, AdamW state, both F-scores, one as np.float64) for a model run.py builds
    from BUILD, and the face folder it was trained on."""
    out = tmp_path_factory.mktemp("stored_best")
    root = fake_faces.write(out / "faces", train=20, test=4, size=64, seed=0)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*BUILD, f"data.root={root}"])
    data = tasks.build_data(cfg, augment=False)
    torch.manual_seed(3)
    model = tasks.build_model(cfg, {"model_args": data["model_args"], "task": cfg.data.get("task")})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 7, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "best_f_score": np.float64(DATASET), "best_image_f_score": IMAGE}, out / "their_best.pth")
    return {"file": out / "their_best.pth", "root": root, "dir": out}


def test_load_model_reads_the_configured_metrics_best(theirs):
    overrides = [*BUILD, f"data.root={theirs['root']}"]
    _, _, saved, _ = loading.load(theirs["file"], overrides=[*overrides, IMAGE_F1])  # what load_model runs
    assert (saved["best_name"], saved["best_score"]) == ("best_image_f_score", IMAGE)
    _, _, saved, _ = loading.load(theirs["file"], overrides=overrides)  # the default loss.metric=dataset_f1
    assert (saved["best_name"], saved["best_score"]) == ("best_f_score", DATASET)


def test_inspect_shows_the_same_stored_best(theirs, capsys):
    assert inspect.main([str(theirs["file"]), IMAGE_F1]) == 0
    assert f"best_image_f_score {IMAGE:.4f}" in capsys.readouterr().out
    assert inspect.main([str(theirs["file"]), IMAGE_F1, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored_best"] == {"name": "best_image_f_score", "score": IMAGE}
    proc = subprocess.run([sys.executable, "-m", "project.commands.inspect", str(theirs["file"])],
                          capture_output=True, text=True, cwd=ROOT)  # the console command, default metric
    assert proc.returncode == 0 and f"best_f_score {DATASET:.4f}" in proc.stdout, proc.stderr


def test_evaluate_shows_the_same_stored_best(theirs, tmp_path, capsys):
    assert evaluate.main([str(theirs["file"]), "--data-root", str(theirs["root"]), "--out", str(tmp_path), *BUILD,
                          IMAGE_F1]) == 0
    out = capsys.readouterr().out
    assert f"the file stores best_image_f_score {IMAGE:.4f}" in out
    assert "(epoch 7 as stored by the file (its own count; no history to say whether it counts from 0 or 1), " in out
    result = json.loads((tmp_path / "val-their_best.json").read_text())
    assert result["stored_best"] == {"name": "best_image_f_score", "score": IMAGE}
    assert result["main_metric"] == "image_f1"


def test_a_continuation_shows_the_same_stored_best(theirs, tmp_path, wandb_env):  # noqa: F811
    child = tmp_path / "child"
    proc = run_cli(*BUILD, f"data.root={theirs['root']}", IMAGE_F1, "resume=reset_optimizer",
                   f"resume.checkpoint={theirs['file']}", "trainer.max_epochs=1", "trainer.batch_size=4",
                   "trainer.num_threads=1", "logger=wandb", f"hydra.run.dir={child}", cwd=tmp_path,
                   env_extra=wandb_env)
    assert f"stored best {IMAGE:.4f} was computed by another script" in proc.stdout
    final = load(child / "checkpoints" / "final_model.pth")
    assert final["lineage"][-1]["best_score"] == IMAGE and final["parent_best"]["score"] == IMAGE
    parent = json.loads((child / "lineage.json").read_text())["parent"]
    assert (parent["best_name"], parent["best_score"], parent["foreign"]) == ("best_image_f_score", IMAGE, True)
    assert wandb_run(child / "wandb")["summary"]["parent_best"] == IMAGE
