"""A file that cannot be read never costs the run: a truncated JPEG in a folder read by 2 DataLoader workers.

data.on_bad_file=error (the default): one paragraph naming the file and the decoder's reason, exit 2, and last.pth
saved at the step before the bad batch, as a stop signal saves it; once the file is replaced, resume=full ends bit
for bit where a run that never met it ends. data.on_bad_file=skip: the run finishes, the log names the file, and the
batches are the same whichever number of workers forms them, and a resume mid-epoch reads the same ones. project-preview --check-files lists the file first.
"""
import shutil

import pytest
import torch

from conftest import ROOT, assert_resumed, assert_same_state, load, run_cli, training_rows
from project import tasks
from project.commands import preview
from project.data import fake_faces
from project.data.loader import RunLoader, batch_order

DATA = ["data=celebamask", "data.image_size=32", "data.val_fraction=0.2", "data.num_workers=2"]
TRAIN = ["model=unet", "model.base_channels=4", "trainer.batch_size=4", "trainer.num_threads=1",
         "trainer.max_epochs=2", "logger=csv"]
BATCH = 2  # the bad file is in epoch 1's batch 3: last.pth holds the 2 batches before it


def composed(*overrides):
    return preview.compose(list(overrides))


def truncate(path) -> bytes:
    """Cut a JPEG in half, as an interrupted copy does; the original bytes, to put back."""
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])
    return good


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of 24 generated faces (and 2 test images) (JPEG images, PNG masks), the training image that epoch 1 reads in its third
    batch, and a finished run on the intact folder (the reference)."""
    tmp = tmp_path_factory.mktemp("bad_files")
    root = fake_faces.write(tmp / "data", train=24, test=2, size=32)
    train = tasks.build_data(composed(*DATA, f"data.root={root}"))["train"]
    batches = batch_order(len(train), 4, 0, 0)  # seed 0, epoch 0: the first epoch's order
    bad = train.pairs[int(batches[BATCH][0])][0]
    run_cli(*DATA, f"data.root={root}", *TRAIN, f"hydra.run.dir={tmp / 'reference'}", cwd=tmp)
    return tmp, root, bad


def test_a_truncated_jpeg_stops_after_saving_and_resume_ends_as_if_never_met(folder):
    tmp, root, bad = folder
    run_dir = tmp / "met"
    good = truncate(bad)
    try:
        assert preview.main(["--check-files", *DATA, f"data.root={root}"]) == 1  # listed before any run
        proc = run_cli(*DATA, f"data.root={root}", *TRAIN, f"hydra.run.dir={run_dir}", cwd=tmp, check=False)
    finally:
        bad.write_bytes(good)  # the file replaced by a good copy
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Image {bad} cannot be read: image file is truncated" in said, said
    assert "data.on_bad_file=skip" in said and f"resume=full resume.checkpoint={run_dir}" in said, said
    assert "Traceback" not in proc.stderr, proc.stderr
    last = run_dir / "checkpoints" / "last.pth"
    saved = load(last)
    assert (saved["epoch"], saved["batch_in_epoch"], saved["global_step"]) == (0, BATCH, BATCH)
    assert f"{last} holds epoch 1 up to batch {BATCH}" in said, said

    resumed = run_cli("resume=full", f"resume.checkpoint={run_dir}", f"hydra.run.dir={tmp / 'resumed'}", cwd=tmp)
    final = load(tmp / "resumed" / "checkpoints" / "final_model.pth")
    assert_resumed(resumed.stdout + resumed.stderr, last, BATCH, final)
    assert_same_state(final, load(tmp / "reference" / "checkpoints" / "final_model.pth"))
    assert training_rows(tmp / "resumed") == training_rows(tmp / "reference")


def test_skip_finishes_naming_the_file_and_batches_do_not_depend_on_workers(folder, capsys):
    tmp, root, bad = folder
    copy = tmp / "skip_data"
    shutil.copytree(root, copy)
    bad = copy / bad.relative_to(root)
    truncate(bad)
    assert preview.main(["--check-files", *DATA, f"data.root={copy}"]) == 1
    assert f"Image {bad} cannot be read: image file is truncated" in capsys.readouterr().out

    train = tasks.build_data(composed(*DATA, f"data.root={copy}", "data.on_bad_file=skip"))["train"]
    read = []
    for workers in (0, 2):  # epochs 1 and 2, then epoch 2 from its batch 3 on, as a resume reads it
        loader = RunLoader(train, 4, seed=0, num_workers=workers)
        read.append([batch for epoch, start in ((0, 0), (1, 0), (1, BATCH)) for batch in loader.epoch(epoch, start)])
        loader.close()
    n = len(batch_order(len(train), 4, 0, 0))
    assert [len(b[0]) for b in read[0]][BATCH] == 3  # the bad sample left out of its batch, the others kept
    assert len(read[0]) == len(read[1]) == 3 * n - BATCH

    def same(a, b):
        return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    assert same(*read) and same(read[0][2 * n:], read[0][n + BATCH:2 * n])

    proc = run_cli(*DATA, f"data.root={copy}", "data.on_bad_file=skip", *TRAIN, f"hydra.run.dir={tmp / 'skip'}",
                   cwd=tmp)
    log = (tmp / "skip" / "training.log").read_text()
    assert f"Skipped a sample (data.on_bad_file=skip): Image {bad} cannot be read" in log, proc.stderr
    assert (tmp / "skip" / "checkpoints" / "final_model.pth").is_file()


def test_a_mask_that_is_no_image_among_the_first_validation_samples_is_a_refusal(folder):
    """The model's fit is probed on the first validation samples before anything is written: a file there that
    cannot be read is a refusal (exit 2, the fix named, no run dir left)."""
    tmp, root, _ = folder
    copy = tmp / "probe_data"
    shutil.copytree(root, copy)
    mask = tasks.build_data(composed(*DATA, f"data.root={copy}"))["val"].pairs[0][1]
    mask.write_bytes(b"not an image")
    proc = run_cli(*DATA, f"data.root={copy}", *TRAIN, f"hydra.run.dir={tmp / 'probe'}", cwd=tmp, check=False)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Mask {mask} cannot be read: cannot identify image file" in said, said
    assert "data.on_bad_file=skip" in said and "Nothing was trained or written." in said, said
    assert not (tmp / "probe").exists()
