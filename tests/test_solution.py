"""The stand-alone solution script (project/evaluation/solution_run.py), a real file shipped as package data:
every setting project-predict fills in is found, and its prediction is project.evaluation.inference's. The
script run alone in a fresh process on a trained model: tests/test_predict.py."""
import ast
import importlib

import pytest
import torch
from torch import nn

from project.evaluation import inference, solution

SETTINGS = {"SOURCE": "/runs/a/checkpoints/best_model.pth", "MODEL": ("unet", "UNet"),
            "MODEL_ARGS": {"base_channels": 4, "num_classes": 5}, "DROPPED_MODULES": ["decoder"], "IMAGE_SIZE": 16,
            "MEAN, STD": ([0, 0, 0], [1, 1, 1]), "IN_CHANNELS": 3, "DECODER": "pil", "TTA_FLIP": True,
            "FLIP_PAIRS": [[1, 2], [3, 4]]}


def test_every_setting_is_filled_in_and_the_script_still_parses():
    text = solution.render(SETTINGS)
    for line in ("SOURCE = '/runs/a/checkpoints/best_model.pth'  # the checkpoint", "MODEL = ('unet', 'UNet')",
                 "MODEL_ARGS = {'base_channels': 4, 'num_classes': 5}", "DROPPED_MODULES = ['decoder']  # removed",
                 "IMAGE_SIZE = 16  # the training", "MEAN, STD = [0, 0, 0], [1, 1, 1]  # the training normalisation",
                 "IN_CHANNELS = 3", "DECODER = 'pil'  # how", "TTA_FLIP = True  # average",
                 "FLIP_PAIRS = [[1, 2], [3, 4]]  # class indices"):
        assert line in text
    ast.parse(text)
    with pytest.raises(RuntimeError, match="NOT_A_SETTING"):
        solution.render({"NOT_A_SETTING": 1})


@pytest.mark.parametrize("tta", [False, True])
def test_the_script_predicts_what_inference_predicts(monkeypatch, tta):
    script = importlib.import_module("project.evaluation.solution_run")
    for name, value in {"IMAGE_SIZE": 16, "TTA_FLIP": tta, "FLIP_PAIRS": [[1, 2], [3, 4]]}.items():
        monkeypatch.setattr(script, name, value)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).eval()
    image = torch.randint(0, 256, (3, 23, 37), dtype=torch.uint8)  # not the training size, not square
    batch = inference.prepare([image], {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    probs = inference.probabilities(model, batch, tta, [[1, 2], [3, 4]])[0]
    want = inference.at_size(probs, (23, 37)).argmax(0).to(torch.uint8)
    assert torch.equal(script.predict(model, image, torch.device("cpu")), want)


def test_the_script_prepares_images_with_the_library_function_itself():
    """run.py's to_input is project/data/normalisation.py's source, written in by render (never a drifted copy),
    and the shipped template's own copy (so it can be imported, above) is that source too."""
    import inspect
    from importlib import resources

    from project.data.normalisation import to_input

    source = inspect.getsource(to_input)
    assert source in solution.render(SETTINGS)
    assert source in resources.files("project.evaluation").joinpath(solution.SCRIPT).read_text()
