"""The phase story's building blocks on their own, in-process and fast: SwinMMoE, ResNet-18, shapes_multitask,
image_folder. The end-to-end runs that train them live in test_swin_phases.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT
from project.data import image_folder, shapes_multitask
from project.errors import UserError
from project.models.swin_mmoe import SwinMMoE

TASKS = {"diagnosis": 3, "change": 3}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def inputs(batch=2, size=64, channels=3, tabular_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.randn(batch, tabular_dim, generator=g)


def random_mask(model, batch, ratio=0.6, seed=0):
    return torch.rand(batch, *model.mask_grid(), generator=torch.Generator().manual_seed(seed)) < ratio


# --- SwinMMoE ---------------------------------------------------------------------------------------------------

def test_swin_has_the_documented_top_level_modules():
    model = SwinMMoE()
    names = {name for name, _ in model.named_children()}
    assert names == {"patch_embed", "encoder", "norm", "prior", "experts", "gates", "heads", "decoder"}
    assert isinstance(model.mask_token, torch.nn.Parameter)
    assert set(model.gates) == set(model.heads) == set(TASKS) and len(model.experts) == 4


@pytest.mark.parametrize("kwargs, size", [
    ({}, 64),
    ({"tasks": {"a": 2, "b": 5, "c": 4}, "tabular_dim": 5, "in_channels": 1, "img_size": 32}, 32),
    ({"depths": (2, 2, 2), "num_heads": (1, 2, 4), "embed_dim": 8, "img_size": 64}, 64),  # 3 stages: stride 16
])
def test_swin_forward_and_reconstruct_shapes(kwargs, size):
    torch.manual_seed(0)
    model = SwinMMoE(**kwargs).eval()
    channels, tabular_dim = kwargs.get("in_channels", 3), kwargs.get("tabular_dim", 8)
    images, tabular = inputs(3, size, channels, tabular_dim)
    out = model(images, tabular)
    assert {task: logits.shape for task, logits in out.items()} == {
        task: (3, n) for task, n in kwargs.get("tasks", TASKS).items()}
    assert model.mask_grid() == (size // 4, size // 4)
    assert model.reconstruct(images, random_mask(model, 3)).shape == images.shape


def test_masked_patches_are_replaced_by_the_mask_token():
    torch.manual_seed(0)
    model = SwinMMoE(dropout=0.0).eval()
    images, _ = inputs()
    none = torch.zeros(2, *model.mask_grid(), dtype=torch.bool)
    visible = model.reconstruct(images, none)
    # the mask decides what the encoder sees: masking changes the output, hiding every patch makes it image-free
    assert not torch.allclose(model.reconstruct(images, random_mask(model, 2)), visible)
    everything = torch.ones_like(none)
    other = torch.randn_like(images)
    assert torch.allclose(model.reconstruct(images, everything), model.reconstruct(other, everything))


def test_swin_backward_reaches_the_right_parameters():
    torch.manual_seed(0)
    model = SwinMMoE()
    images, tabular = inputs(4)
    labels = torch.tensor([0, 1, 2, 0])
    out = model(images, tabular)
    sum(F.cross_entropy(logits, labels) for logits in out.values()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    # classification trains everything but SimMIM's parts
    assert no_grad == {"mask_token"} | {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    model.zero_grad(set_to_none=True)
    mask = random_mask(model, 4)
    recon = model.reconstruct(images, mask)
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    (recon - images).abs().mul(pixel_mask).mean().backward()  # SimMIM: L1 on masked pixels
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.decoder.parameters())
    # reconstruction leaves the classification side alone
    assert all(p.grad is None for m in (model.prior, model.experts, model.gates, model.heads) for p in m.parameters())


def test_dropping_the_decoder():
    torch.manual_seed(0)
    model = SwinMMoE()
    before = sum(p.numel() for p in model.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    del model.decoder  # what the fine-tuning phase does
    state = model.state_dict()
    assert not [k for k in state if k.startswith("decoder.")]
    assert sum(p.numel() for p in model.parameters()) == before - decoder > 0
    out = model(*inputs())
    assert {task: logits.shape for task, logits in out.items()} == {task: (2, 3) for task in TASKS}
    # a fresh model without its decoder takes the fine-tuning weights strictly
    fresh = SwinMMoE()
    del fresh.decoder
    fresh.load_state_dict(state, strict=True)


def test_swin_is_deterministic_and_dropout_is_configurable():
    images, tabular = inputs()
    torch.manual_seed(3)
    a = SwinMMoE()
    torch.manual_seed(3)
    b = SwinMMoE()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(0)
    no_dropout = SwinMMoE(dropout=0.0).train()
    first, second = no_dropout(images, tabular), no_dropout(images, tabular)
    assert all(torch.equal(first[t], second[t]) for t in TASKS)
    heavy = SwinMMoE(dropout=0.5).train()
    first, second = heavy(images, tabular), heavy(images, tabular)
    assert not all(torch.equal(first[t], second[t]) for t in TASKS)
    heavy.eval()
    first, second = heavy(images, tabular), heavy(images, tabular)
    assert all(torch.equal(first[t], second[t]) for t in TASKS)


# --- configs ----------------------------------------------------------------------------------------------------

def test_swin_configs_instantiate_with_the_datas_model_args():
    model_args = shapes_multitask.build(image_size=64, train_size=2, val_size=2)["model_args"]
    cfg = composed("model=swin_mmoe", "data=shapes_multitask")
    model = instantiate(cfg.model, **model_args)
    assert isinstance(model, SwinMMoE) and model.mask_grid() == (16, 16)
    story = composed("model=swin_mmoe_story", "data=shapes_multitask").model
    assert (story.embed_dim, list(story.depths), list(story.num_heads), story.window_size) == (
        96, [2, 2, 6, 2], [3, 6, 12, 24], 8)
    assert "tasks" not in story and "tabular_dim" not in story and "in_channels" not in story
    # the story's shape combination builds; its 256x256 forward is checked by hand (seconds on 2 cores)
    big = instantiate(story, **model_args).eval()
    with torch.no_grad():
        assert big(*inputs(1, 64))["change"].shape == (1, 3)


def test_resnet_config_from_scratch():
    cfg = composed("model=resnet", "data=image_folder", "data.root=/nowhere", "loss=cross_entropy")
    assert cfg.model.weights is None
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=5).eval()
    assert model.fc.out_features == 5
    with torch.no_grad():
        for size in (32, 64):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


# --- shapes_multitask -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multitask():
    return shapes_multitask.build()


def test_shapes_multitask_layout(multitask):
    assert multitask["tasks"] == TASKS
    assert multitask["model_args"] == {"tasks": TASKS, "tabular_dim": 8, "in_channels": 3, "img_size": 64}
    for split, n in (("train", 512), ("val", 128)):
        images, tabular, diagnosis, change = multitask[split].tensors
        assert images.shape == (n, 3, 64, 64) and images.dtype == torch.float32
        assert tabular.shape == (n, 8) and tabular.dtype == torch.float32
        assert diagnosis.shape == change.shape == (n,) and diagnosis.dtype == change.dtype == torch.int64
        assert len(multitask[split]) == n
    batch = multitask["train"][torch.tensor([5, 1, 7])]  # a whole batch by index tensor, as the loader asks
    assert [t.shape[0] for t in batch] == [3, 3, 3, 3]


def test_shapes_multitask_is_deterministic(multitask):
    again = shapes_multitask.build()
    for split in ("train", "val"):
        assert all(torch.equal(a, b) for a, b in zip(multitask[split].tensors, again[split].tensors))
    assert not torch.equal(multitask["train"].tensors[0][:128], multitask["val"].tensors[0])
    other = shapes_multitask.build(seed=1, train_size=128)
    # val is drawn from seed + 1, so seed 1's train is seed 0's val; any other seed gives other images
    assert torch.equal(other["train"].tensors[0], multitask["val"].tensors[0])
    assert not torch.equal(other["val"].tensors[0], multitask["val"].tensors[0])


def test_shapes_multitask_labels_are_balanced_and_the_prior_is_informative(multitask):
    _, tabular, diagnosis, change = multitask["train"].tensors
    for labels in (diagnosis, change):
        share = torch.bincount(labels, minlength=3).float() / len(labels)
        assert share.min() > 0.15 and share.max() < 0.5, share
    # the tabular vector hints at both labels (chance is 1/3) without giving them away
    for features, labels in ((tabular[:, :3], diagnosis), (tabular[:, 3:6], change)):
        acc = (features.argmax(1) == labels).float().mean()
        assert 0.45 < acc < 0.85, acc


# --- image_folder -----------------------------------------------------------------------------------------------

def write_image_folder(root, classes=("cat", "dog"), n=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8))
                if i == 0:
                    image = image.convert("L")  # one grayscale file per class
                image.save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_reads_real_png_files(tmp_path, channels):
    write_image_folder(tmp_path)
    data = image_folder.build(tmp_path, image_size=32, in_channels=channels, num_workers=0)
    assert data["classes"] == ["cat", "dog"] and data["model_args"] == {"num_classes": 2}
    assert data["num_workers"] == 0 and len(data["train"]) == len(data["val"]) == 6
    for i in range(len(data["train"])):  # the grayscale files too
        image, label = data["train"][i]
        assert image.shape == (channels, 32, 32) and image.dtype == torch.float32 and label in (0, 1)


def test_image_folder_bad_roots_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"data\.root=.*train/"):
        image_folder.build(tmp_path / "missing")
    write_image_folder(tmp_path / "noval")
    for path in (tmp_path / "noval" / "val").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(UserError, match=r"data\.root="):  # class folders without images
        image_folder.build(tmp_path / "noval")
    write_image_folder(tmp_path / "mixed")
    (tmp_path / "mixed" / "val" / "dog").rename(tmp_path / "mixed" / "val" / "horse")
    with pytest.raises(UserError, match="same class folders"):
        image_folder.build(tmp_path / "mixed")
