"""Folder data as users have it: classes, colours and flip pairs declared once; splits of train/; an optional test/;
augmentation on torchvision v2 that swaps left/right labels and draws the same sample in any process; bad masks.

In-process where no process is needed; the CLI runs check what a user sees (exit codes, messages, run-dir files)."""
import numpy as np
import pytest
import torch
from PIL import Image
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torchvision import tv_tensors

from conftest import ROOT, TINY_TRAINER, load, run_cli
from project import distributed, tasks
from project.commands import preview
from project.data import fake_faces, image_folder, splits
from project.data.augment import FlipPairs
from project.data.loader import RunLoader, batch_order
from project.errors import UserError

FACES = ["data=celebamask", "data.image_size=32", "data.num_workers=0"]


def composed(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return fake_faces.write(tmp_path_factory.mktemp("faces") / "data", train=20, test=4, size=48)


# --- the data, described once -----------------------------------------------------------------------------------

def test_presets_declare_classes_colours_and_flip_pairs():
    celeba = composed("data=celebamask", "data.root=/x").data
    assert len(celeba.classes) == len(celeba.colors) == celeba.num_classes == 19
    assert [celeba.classes[i] for i in (0, 4, 5, 13, 18)] == ["background", "l_eye", "r_eye", "hair", "cloth"]
    assert celeba.flip_pairs == [[4, 5], [6, 7], [8, 9]] and celeba.task == "segmentation"
    lapa = composed("data=lapa", "data.root=/x").data
    assert len(lapa.classes) == len(lapa.colors) == lapa.num_classes == 11
    assert lapa.masks_dir == "labels" and lapa.flip_pairs == [[2, 3], [4, 5]]
    assert [lapa.classes[i] for i in (2, 3, 10)] == ["l_brow", "r_brow", "hair"]


def test_lapa_layout_reads_labels_and_its_own_val_and_test(tmp_path):
    for split in ("train", "val", "test"):
        for folder in ("images", "labels"):
            (tmp_path / split / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / split / "images" / f"{i}.jpg")
            Image.fromarray(np.full((16, 16), 10, np.uint8)).save(tmp_path / split / "labels" / f"{i}.png")
    cfg = composed("data=lapa", f"data.root={tmp_path}", "data.image_size=16", "data.num_workers=0")
    data = tasks.build_data(cfg)
    assert len(data["train"]) == len(data["val"]) == len(data["test"]) == 3 and data["classes"][10] == "hair"
    assert data["val"][0][1].unique().tolist() == [10] and data["split"]["how"] == "val/"


def test_class_descriptions_that_do_not_fit_are_named(faces):
    for override, words in (("data.classes=[a,b]", "data.classes names 2 classes"),
                            ("data.flip_pairs=[[4,40]]", "data.flip_pairs=[[4, 40]]"),
                            ("data.colors=[[0,0,0]]", "data.colors")):
        with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
            tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", override))


def test_bad_mask_value_names_the_file_and_the_value(tmp_path, faces):
    cfg = composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", "data.num_classes=19")
    data = tasks.build_data(cfg)
    bad = data["train"].pairs[3][1]
    mask = np.array(Image.open(bad))
    mask[0, 0] = 40  # neither a class (0..18) nor ignore_index (255)
    Image.fromarray(mask).save(bad)
    try:
        with pytest.raises(UserError, match=f"Mask {bad} holds the value 40, which is neither a class index"):
            data["train"][3]
        # through DataLoader workers, as training reads it: one paragraph, exit 2, no traceback
        proc = run_cli(*TINY_TRAINER, "data=celebamask", f"data.root={faces}", "data.val_fraction=0.2",
                       "data.image_size=32", "data.num_workers=2", "model.base_channels=4",
                       f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and f"Mask {bad} holds the value 40" in err, proc.stderr
        assert "Traceback" not in proc.stderr and "Original" not in err
    finally:
        mask[0, 0] = 0
        Image.fromarray(mask).save(bad)


# --- splits -----------------------------------------------------------------------------------------------------

def test_val_fraction_is_a_fixed_split_of_train_and_val_list_reproduces_it(tmp_path, faces):
    names = [f"{i:04d}" for i in range(20)]
    train, val = splits.split(names, val_fraction=0.2, split_seed=0)
    assert len(val) == 4 and sorted(train + val) == names and not set(train) & set(val)
    assert splits.split(names, val_fraction=0.2, split_seed=0) == (train, val)  # no run seed involved
    assert splits.split(names, val_fraction=0.2, split_seed=1)[1] != val
    listed = tmp_path / "val.txt"
    listed.write_text("# my split\n" + "\n".join(f"{n}.jpg" for n in val) + "\n\n")
    assert splits.split(names, val_list=listed) == (train, val)
    with pytest.raises(UserError, match="names 1 files that train/ does not have"):
        listed.write_text("nope\n")
        splits.split(names, val_list=listed)
    with pytest.raises(UserError, match="must lie between 0 and 1"):
        splits.split(names, val_fraction=1.5)
    with pytest.raises(UserError, match="set one of them"):
        splits.split(names, val_fraction=0.1, val_list=listed)


def test_folder_without_val_asks_for_a_split(faces):
    with pytest.raises(UserError, match=r"has no val/ folder\. Split validation images off train/ with "
                                        r"data\.val_fraction=0\.1"):
        tasks.build_data(composed(*FACES, f"data.root={faces}"))


def test_test_split_is_read_with_and_without_masks(tmp_path, faces):
    data = tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2"))
    test = data["test"]
    assert len(test) == 4 and not test.has_targets and len(test[0]) == 1 and test[0][0].shape == (3, 32, 32)
    import shutil
    labelled = tmp_path / "labelled"
    shutil.copytree(faces, labelled)
    (labelled / "test" / "masks").mkdir()
    for image in (labelled / "test" / "images").iterdir():
        shutil.copy(labelled / "train" / "masks" / f"{image.stem}.png", labelled / "test" / "masks")
    test = tasks.build_data(composed(*FACES, f"data.root={labelled}", "data.val_fraction=0.2"))["test"]
    assert test.has_targets and test[0][1].shape == (32, 32)


def test_classification_folder_splits_and_reads_test_images(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    (tmp_path / "test").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "test" / "x.png")
    data = image_folder.build(tmp_path, image_size=8, num_workers=0, val_fraction=0.2)
    assert len(data["train"]) == 8 and len(data["val"]) == 2 and data["classes"] == ["cat", "dog"]
    assert all("/" in n for n in data["split_names"]["val"])  # CLASS/NAME: the same stem may be in two classes
    assert len(data["test"]) == 1 and len(data["test"][0]) == 1  # no label


# --- augmentation -----------------------------------------------------------------------------------------------

def test_flip_swaps_left_and_right_labels():
    mask = torch.zeros(8, 10, dtype=torch.int64)
    mask[2:4, 1:3] = 4  # only l_eye, on the left
    mask[6, 0] = 255  # ignore_index stays what it is
    image = torch.zeros(3, 8, 10, dtype=torch.uint8)
    _, flipped = FlipPairs(pairs=[[4, 5], [6, 7]], p=1.0)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert set(flipped.unique().tolist()) == {0, 5, 255}  # l_eye became r_eye ...
    assert (flipped[2:4, 7:9] == 5).all() and flipped[6, 9] == 255  # ... at the mirrored place
    _, plain = FlipPairs(pairs=[], p=1.0)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert (plain[2:4, 7:9] == 4).all()  # a flip without pairs keeps the label: what users' scripts got wrong


def test_face_parsing_augmentation_keeps_sides_right(faces):
    """Through the whole option: wherever a flip happened, the person's left eye (l_eye, 4) is still right of
    their right eye (r_eye, 5) in the image, as in every unflipped CelebAMask-HQ mask."""
    cfg = composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", "augment=face_parsing")
    data, flips = tasks.build_data(cfg), 0
    columns = torch.arange(32).float()
    for i in range(len(data["train"])):
        _, mask = data["train"][(3, 1, i)]
        if (mask == 4).any() and (mask == 5).any():
            assert columns[(mask == 4).any(0)].mean() > columns[(mask == 5).any(0)].mean()
    with open_dict(cfg):
        cfg.augment.transforms[1].pairs = []  # the same flips without the swap: some masks now have sides wrong
    data = tasks.build_data(cfg)
    for i in range(len(data["train"])):
        _, mask = data["train"][(3, 1, i)]
        flips += bool(columns[(mask == 4).any(0)].mean() < columns[(mask == 5).any(0)].mean())
    assert flips > 0


def test_augmented_samples_are_the_same_in_any_process_and_differ_between_epochs(faces):
    data = tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", "augment=face_parsing"))
    train, seed = data["train"], 7
    direct = [train[(seed, 0, i)] for i in range(len(train))]
    assert len(train) > 0
    for workers in (0, 2):  # the run's own loader, built as the recipe builds the training split's
        loader = RunLoader(train, 4, seed=seed, num_workers=workers)
        try:
            for epoch in (0, 1):  # persistent workers: the second epoch's keys reach the same processes
                loaded = [s for batch in loader.epoch(epoch) for s in zip(*batch)]
                want = [train[(seed, epoch, i)] for b in batch_order(len(train), 4, seed, epoch) for i in b.tolist()]
                assert len(loaded) == len(want) == len(train), (workers, epoch, len(loaded))
                assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(want, loaded))
        finally:
            loader.close()
    assert not torch.equal(train[(seed, 1, 0)][0], direct[0][0])  # another epoch, another draw
    assert torch.equal(train[(seed, 0, 0)][0], direct[0][0])  # the global RNG played no part
    # two ranks: each takes its part of every global batch (distributed.shard), and the parts are the same samples
    saved = distributed._current
    try:
        for batch in batch_order(len(train), 8, seed, 0):
            parts = []
            for rank in range(2):
                distributed._current = distributed.Dist(rank=rank, world=2, local_world=2)
                parts += [train[(seed, 0, i)] for i in distributed.shard(batch).tolist()]
            whole = [direct[i] for i in batch.tolist()]
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, parts))
    finally:
        distributed._current = saved


def test_augment_on_generated_data_is_a_clear_error():
    with pytest.raises(UserError, match="augments folder data .* but data._target_=project.data.shapes.build takes no augmentation"):
        tasks.build_data(composed("augment=segmentation"))


def test_preview_draws_the_samples_training_sees(tmp_path, faces, capsys):
    out = tmp_path / "preview.png"
    assert preview.main([*FACES, f"data.root={faces}", "data.val_fraction=0.2", "augment=face_parsing",
                         "--n", "6", "--out", str(out)]) == 0
    assert "6 training samples of epoch 1" in capsys.readouterr().out
    assert Image.open(out).size[0] > 200
    cfg = composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", "augment=face_parsing")
    data, shown = preview.samples(cfg, 3, 0)
    first = batch_order(len(data["train"]), cfg.trainer.batch_size, cfg.seed, 0)[0][0].item()
    assert torch.equal(shown[0][0], data["train"][(cfg.seed, 0, first)][0])  # epoch 1's first sample, as trained
    assert preview.main(["data=celebamask", "data.root=/nowhere", "--out", str(out)]) == 2


# --- runs -------------------------------------------------------------------------------------------------------

def test_split_is_recorded_and_kept_by_resume_full(tmp_path, faces):
    common = [*TINY_TRAINER, "data=celebamask", f"data.root={faces}", "data.image_size=32", "data.num_workers=0",
              "model.base_channels=4", "trainer.max_epochs=1"]
    run_cli(*common, "data.val_fraction=0.25", "data.split_seed=3", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    val = (tmp_path / "a" / "split" / "val.txt").read_text().split()
    train = (tmp_path / "a" / "split" / "train.txt").read_text().split()
    assert len(val) == 5 and len(train) == 15 and not set(val) & set(train)
    first = load(tmp_path / "a" / "checkpoints" / "last.pth")
    assert first["data_split"]["val"] == 5 and first["classes"][4] == "l_eye"
    # resume=full recomposes the run's own config: the same split without typing it again
    proc = run_cli(*TINY_TRAINER, "resume=full", f"resume.checkpoint={tmp_path / 'a'}", "trainer.max_epochs=2",
                   f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert (tmp_path / "b" / "split" / "val.txt").read_text().split() == val
    second = load(tmp_path / "b" / "checkpoints" / "last.pth")
    assert second["data_split"] == first["data_split"] and second["epoch"] == 2
    assert "not comparable" not in proc.stdout + proc.stderr
    # another split is said in the change table
    proc = run_cli(*TINY_TRAINER, "resume=full", f"resume.checkpoint={tmp_path / 'a'}", "trainer.max_epochs=2",
                   "data=celebamask", f"data.root={faces}", "data.image_size=32", "data.num_workers=0",
                   "data.val_fraction=0.25", "data.split_seed=4", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    log = (tmp_path / "c" / "training.log").read_text()
    assert "data.split_seed" in log and "scores not comparable" in log
    assert "the validation split differs from the checkpoint's" in log
    # val_list reproduces the first run's split exactly
    run_cli(*common, f"data.val_list={tmp_path / 'a' / 'split' / 'val.txt'}", f"hydra.run.dir={tmp_path / 'd'}",
            cwd=tmp_path)
    assert load(tmp_path / "d" / "checkpoints" / "last.pth")["data_split"]["val_names_sha256"] == \
        first["data_split"]["val_names_sha256"]


def test_classification_augmentation_and_both_decoders(tmp_path, faces):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.open(faces / "train" / "images" / f"{i:04d}.jpg").save(tmp_path / "train" / c / f"{i}.jpg")
    cfg = composed("data=image_folder", f"data.root={tmp_path}", "data.val_fraction=0.25", "data.image_size=24",
                   "augment=classification")
    data = tasks.build_data(cfg)
    image, label = data["train"][(1, 0, 0)]
    assert image.shape == (3, 24, 24) and torch.equal(image, data["train"][(1, 0, 0)][0])
    assert data["val"].pipeline.augment is None and data["train"].pipeline.augment is not None
    # pil and torchvision decode the same JPEG to nearly the same pixels, not necessarily the same ones
    pil = tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2"))["val"][0][0]
    tv = tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2",
                                   "data.decoder=torchvision"))["val"][0][0]
    assert pil.shape == tv.shape and (pil - tv).abs().mean() < 0.1
    with pytest.raises(UserError, match="data.decoder='opencv' is unknown"):
        tasks.build_data(composed(*FACES, f"data.root={faces}", "data.val_fraction=0.2", "data.decoder=opencv"))
