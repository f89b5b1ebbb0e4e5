"""A process SIGKILLed while it writes a checkpoint leaves every previously written checkpoint loadable; a disk that
fills at any point of a save (issue 16) ends it cleanly with the earlier files intact."""
import io
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from conftest import ROOT, TINY, TINY_DATA, assert_continued_from, assert_resumed, load, mount, run_cli
from project.checkpoints import files as checkpoint
from project.rundirs import lock as rundir
from project.errors import DiskError


def kill_during_save(run_dir, cwd, timeout=120) -> bool:
    """Train (or continue) until a save over an existing checkpoint starts, SIGKILL at that instant."""
    cmd = [sys.executable, str(ROOT / "run.py"), *TINY_DATA, "data.train_size=16", "trainer.max_epochs=200",
           "trainer.save_interval=1", "trainer.keep_last=1000", f"hydra.run.dir={run_dir}", "resume=full",
           f"resume.checkpoint={run_dir}"] if (run_dir / "checkpoints" / "last.pth").exists() else \
          [sys.executable, str(ROOT / "run.py"), *TINY_DATA, "data.train_size=16", "trainer.max_epochs=200",
           "trainer.save_interval=1", "trainer.keep_last=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    ckpt_dir, deadline = run_dir / "checkpoints", time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            # wait for a save that would replace an existing last.pth (temp names look like .last.pth.<pid>.tmp)
            if "last.pth" in names and any(n.endswith(f".{proc.pid}.tmp") for n in names):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_during_save_never_breaks_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    hits = 0
    for _ in range(5):
        hits += kill_during_save(run_dir, tmp_path)
        for path in sorted((run_dir / "checkpoints").glob("*.pth")):  # every completed file is whole
            assert load(path)["epoch"] >= 1
            checkpoint.load(path)
    assert hits >= 3, f"only {hits} of 5 kills landed while a checkpoint was being written"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "expected the killed writes to leave temp files behind (they are ignored)"
    # and the run continues from the newest complete checkpoint
    last = load(run_dir / "checkpoints" / "last.pth")
    cont = run_cli(*TINY_DATA, f"hydra.run.dir={tmp_path / 'continued'}", "data.train_size=16",
                   f"trainer.max_epochs={last['epoch'] + 1}", "resume=full", f"resume.checkpoint={run_dir}",
                   "scheduler=none", "optimizer.lr=1e-5", cwd=tmp_path)  # a small LR: see assert_continued_from
    final = load(tmp_path / "continued" / "checkpoints" / "final_model.pth")
    assert final["epoch"] == last["epoch"] + 1
    assert_resumed(cont.stdout, run_dir / "checkpoints" / "last.pth", last["global_step"], final)
    assert_continued_from(final, last, lr=1e-5)  # its weights and Adam state, not only its counters


def test_a_temp_name_left_by_a_failed_save_never_writes_through_to_a_published_file(tmp_path):
    """A save that failed after linking best_model.pth leaves .last.pth.<pid>.tmp pointing at that file; the next
    save must not truncate it through that name."""
    import os

    import torch

    from project.checkpoints.files import save_atomic

    save_atomic({"epoch": 1}, [tmp_path / "last.pth", tmp_path / "best_model.pth"])
    stale = tmp_path / f".last.pth.{os.getpid()}.tmp"
    os.link(tmp_path / "best_model.pth", stale)  # as if the process died between the two renames
    save_atomic({"epoch": 2}, [tmp_path / "last.pth"])
    assert torch.load(tmp_path / "best_model.pth") == {"epoch": 1}
    assert torch.load(tmp_path / "last.pth") == {"epoch": 2} and not stale.exists()


def test_each_background_save_holds_the_state_of_its_moment(tmp_path):
    """The writer refills the previous save's copy of the state: each file still holds exactly what the state was
    when it was saved (the steps that follow never reach it, nor an earlier file), also when an entry appears or
    changes shape between saves (a phase's new optimizer)."""
    w = torch.arange(6, dtype=torch.float32)
    state = {"epoch": 1, "model_state_dict": {"w": w}, "optimizer_state_dict": {"state": {}}}
    writer = checkpoint.BackgroundWriter()
    writer.snapshot_and_submit(state, [tmp_path / "a.pth"])
    w += 100  # the next training step, while the file is written
    writer.wait()
    moment = torch.zeros(6)
    state = {"epoch": 2, "model_state_dict": {"w": w}, "optimizer_state_dict": {"state": {0: {"exp_avg": moment}}}}
    writer.snapshot_and_submit(state, [tmp_path / "b.pth", tmp_path / "best_model.pth"])
    w += 100
    moment += 1
    writer.wait()
    state = {"epoch": 3, "model_state_dict": {"w": w[:3]}, "optimizer_state_dict": {"state": {0: {"exp_avg": moment}}}}
    writer.snapshot_and_submit(state, [tmp_path / "c.pth"])
    writer.wait()

    a, b, c = (torch.load(tmp_path / name, weights_only=True) for name in ("a.pth", "b.pth", "c.pth"))
    assert a["epoch"] == 1 and torch.equal(a["model_state_dict"]["w"], torch.arange(6.0))
    assert b["epoch"] == 2 and torch.equal(b["model_state_dict"]["w"], torch.arange(6.0) + 100)
    assert torch.equal(b["optimizer_state_dict"]["state"][0]["exp_avg"], torch.zeros(6))
    assert torch.equal(torch.load(tmp_path / "best_model.pth")["model_state_dict"]["w"], torch.arange(6.0) + 100)
    assert c["epoch"] == 3 and torch.equal(c["model_state_dict"]["w"], torch.arange(3.0) + 200)
    assert torch.equal(c["optimizer_state_dict"]["state"][0]["exp_avg"], torch.ones(6))


def test_the_writer_yields_the_cpu_to_training_and_leaves_torch_save_as_it_found_it(tmp_path):
    """The background write runs at a lower priority than the training thread (where the training threads fill
    the cores, it takes the gaps instead of slowing the steps), and serialises without torch's zip CRC-32 (which
    torch.load never checks) without turning it off for anyone else's torch.save."""
    seen = {}
    state = {"epoch": 1, "model_state_dict": {"w": torch.randn(64)}}
    writer = checkpoint.BackgroundWriter()
    writer.snapshot_and_submit(state, [tmp_path / "last.pth"], then=lambda: seen.update(
        writer=os.getpriority(os.PRIO_PROCESS, 0), crc32=torch.serialization.get_crc32_options()))
    writer.wait()
    assert seen["writer"] >= max(10, os.getpriority(os.PRIO_PROCESS, 0)), seen  # Linux: per thread
    assert seen["crc32"] is True  # restored once the file was serialised
    assert torch.equal(torch.load(tmp_path / "last.pth")["model_state_dict"]["w"], state["model_state_dict"]["w"])
    with zipfile.ZipFile(tmp_path / "last.pth") as z:  # no CRC recorded: the cost the writer skipped
        assert all(info.CRC == 0 for info in z.infolist()), [(i.filename, i.CRC) for i in z.infolist()]


# --- past the page cache (issue 27): a 335 MB checkpoint through the page cache cost 0.1-1.1 s of system CPU per save

def serialised(state: dict) -> bytes:
    """The bytes torch.save writes for `state`, as the writer serialises it (without the zip records' CRC-32)."""
    buffer = io.BytesIO()
    checkpoint.serialise(state, buffer)
    return buffer.getvalue()


def cached_bytes(path) -> int:
    """How much of the file is in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.parametrize("size", [0, 4000, 4096, (16 << 20) - 64, (16 << 20) + 4096 + 100])
def test_a_checkpoint_is_written_past_the_page_cache_with_torch_saves_bytes(tmp_path, size):
    """Sizes around a block and around the 16 MiB staging buffer: the file holds exactly torch.save's bytes (its
    tail padded to a block, then cut to length) and none of it went through the page cache."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {kind}, which is the page cache itself")
    state = {"epoch": 1, "w": torch.arange(size // 4, dtype=torch.float32)}
    checkpoint.save_atomic(state, [tmp_path / "last.pth", tmp_path / "best_model.pth"])
    assert cached_bytes(tmp_path / "last.pth") == 0  # written through the page cache, all of it would be there
    expected = serialised(state)
    assert (tmp_path / "last.pth").read_bytes() == expected and (tmp_path / "best_model.pth").stat().st_size == len(expected)
    assert torch.equal(torch.load(tmp_path / "best_model.pth")["w"], state["w"])


def test_a_file_system_without_direct_writes_gets_the_same_file(tmp_path, monkeypatch):
    """ramfs refuses O_DIRECT when the file is opened; a device whose blocks are larger than the writer's refuses the
    write itself (the writer is told 1-byte blocks, so its last write is not a whole 512-byte sector): both files go
    through the page cache with the same bytes."""
    from project.checkpoints import direct_io

    state = {"epoch": 2, "w": torch.randn(3001)}
    ramfs = tmp_path / "ramfs"
    ramfs.mkdir()
    mount("-t", "ramfs", "ramfs", str(ramfs))
    try:
        checkpoint.save_atomic(state, [ramfs / "last.pth"])
        assert (ramfs / "last.pth").read_bytes() == serialised(state)
    finally:
        subprocess.run(["umount", "-l", str(ramfs)], check=False)
    monkeypatch.setattr(direct_io, "BLOCK", 1)
    with direct_io.open_file(tmp_path / "odd.pth") as f:
        checkpoint.serialise(state, f)
        assert f.direct  # opened O_DIRECT; the refusal comes at the write
    assert cached_bytes(tmp_path / "odd.pth") > 0  # this one went through the page cache
    assert (tmp_path / "odd.pth").read_bytes() == serialised(state)


# --- a full disk (issue 16): real small tmpfs mounts, filled to leave room up to a chosen point of the save ------

@pytest.fixture
def tmpfs(tmp_path):
    """make(name, *options): a real tmpfs under tmp_path (tests run as root in CI), unmounted afterwards."""
    mounts = []

    def make(name, *options):
        path = tmp_path / name
        path.mkdir()
        mount("-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path))  # in CI as root it fails, never skips
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free(path) -> int:
    return os.statvfs(path).f_bavail * os.statvfs(path).f_frsize


def fill(fs, leave: int):
    """Take all the room on `fs` but `leave` bytes (rounded down to whole pages, which is what tmpfs counts)."""
    with open(fs / "filler", "wb") as f:
        f.write(b"\0" * (free(fs) - leave))
    assert free(fs) == leave // os.statvfs(fs).f_frsize * os.statvfs(fs).f_frsize
    return fs / "filler"


def a_checkpoint() -> tuple[dict, int, int]:
    """A state shaped like ours (many small tensors, one larger one, plain values), its file size and the offset
    of the zip's central directory (after every tensor's data: only the directory and the end record follow)."""
    state = {"epoch": 2, "best_f_score": 0.5, "big": torch.arange(64 * 1024, dtype=torch.float32),
             "model_state_dict": {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(120)}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, len(buffer.getvalue()), zipfile.ZipFile(buffer).start_dir


def file_names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"filler"}


@pytest.mark.parametrize("point", ["opening the file", "the first record", "tensor data", "the zip's end record"])
def test_a_disk_that_fills_anywhere_in_a_save_is_a_disk_error_and_keeps_the_earlier_files(tmpfs, point):
    state, size, directory = a_checkpoint()
    page = 4096
    room = {"opening the file": 0, "the first record": 0, "tensor data": directory // 2 // page * page,
            # every byte before the central directory fits; the directory and the end record do not
            "the zip's end record": -(-directory // page) * page}[point]
    assert room < size, "the file would fit: this point of the save is not reached"
    fs = tmpfs("small", "size=1m", "nr_inodes=6") if point == "opening the file" else tmpfs("small", "size=1m")
    earlier = {"epoch": 1, "w": torch.ones(3)}
    checkpoint.save_atomic(earlier, [fs / "last.pth", fs / "best_model.pth"])
    if point == "opening the file":  # no inode left: open() itself fails with ENOSPC
        fillers = []
        try:
            while True:
                fillers.append(fs / f"inode{len(fillers)}")
                fillers[-1].touch()
        except OSError:
            fillers.pop()
    else:
        fillers = [fill(fs, room)]

    left = free(fs)
    with pytest.raises(DiskError) as failed:
        checkpoint.save_atomic(state, [fs / "last.pth", fs / "best_model.pth", fs / "checkpoint_epoch_2.pth"])
    message = str(failed.value)
    assert message.startswith(f"Could not write {fs / 'last.pth'}: No space left on device"), message
    room = f"{left / 1e6:.2f} MB free" + (" but no file entries (inodes) left" if point == "opening the file" else "")
    assert f"(about {size / 1e6:.2f} MB needed, {room} on that file system)." in message, message
    assert file_names(fs) - {f.name for f in fillers} == {"last.pth", "best_model.pth"}, "a temp file is left"
    for name in ("last.pth", "best_model.pth"):  # the earlier files are whole and unchanged
        assert checkpoint.read(fs / name).keys() == earlier.keys() and torch.load(fs / name)["epoch"] == 1

    for filler in fillers:  # room again: the same save succeeds (it failed for want of space, nothing else)
        filler.unlink()
    checkpoint.save_atomic(state, [fs / "last.pth", fs / "best_model.pth"])
    assert torch.equal(torch.load(fs / "best_model.pth")["big"], state["big"])


def test_a_zip_writer_failure_without_its_oserror_is_a_disk_error_only_when_the_room_is_too_small(tmpfs):
    """torch's zip writer may report a failed write as a bare RuntimeError (no OSError chained): a full file system
    that lacks the room the file needs makes it the disk error; with room, or another error, it stays what it is."""
    fs = tmpfs("small", "size=1m")
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    assert rundir.disk_error(torn, fs / "last.pth", needed=500_000) is None  # 1 MB free: not the disk
    fill(fs, 4096)
    error = rundir.disk_error(torn, fs / "last.pth", needed=500_000)
    assert isinstance(error, DiskError) and "No space left on device (about 0.50 MB needed, 0.00 MB free" in str(error)
    assert rundir.disk_error(RuntimeError("some other failure"), fs / "last.pth", needed=500_000) is None
    # the errno named in the text, or an OSError anywhere in the chain (cause or context, however deep)
    assert rundir.disk_errno(RuntimeError("write failed: [Errno 122] Disk quota exceeded")) == 122
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ValueError("middle")
    wrapped.__cause__.__context__ = OSError(30, "Read-only file system")
    assert rundir.disk_errno(wrapped) == 30 and rundir.disk_errno(OSError(5, "Input/output error")) is None


def test_a_run_that_fills_its_disk_exits_4_and_continues_from_its_intact_checkpoint(tmpfs, tmp_path):
    """The issue's run: every epoch keeps a checkpoint (keep_last=null) until the small file system is full."""
    fs = tmpfs("small", "size=2m")  # three of the tiny run's ~0.53 MB checkpoints fit, the fourth does not
    run_dir = fs / "run"
    proc = run_cli(*TINY, "trainer.max_epochs=40", "trainer.save_interval=1", "trainer.keep_last=null",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 4 and "Traceback" not in err, proc.stdout + proc.stderr
    epoch = load(run_dir / "checkpoints" / "last.pth")["epoch"]
    assert epoch >= 2, f"the disk filled at epoch {epoch}: too early to show that earlier files survive"
    assert f"Could not write {run_dir / 'checkpoints' / 'last.pth'}: No space left on device" in err, err
    assert f"last.pth holds epoch {epoch}. Nothing partial was left behind" in err, err
    needed, room = map(float, re.search(r"about ([\d.]+) MB needed, ([\d.]+) MB free", err).groups())
    assert needed > room, err  # the numbers say why
    command = f"python run.py resume=full resume.checkpoint={run_dir}"
    assert err.endswith(command), err
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")], "a temp file is left holding the space"
    for path in (run_dir / "checkpoints").glob("*.pth"):
        checkpoint.load(path)
    for old in (run_dir / "checkpoints").glob("checkpoint_epoch_*.pth"):  # the user frees space
        old.unlink()
    cont = run_cli(*TINY, *command.split()[2:], f"trainer.max_epochs={epoch + 1}", cwd=tmp_path)
    final = load(next(tmp_path.glob("outputs/*/*/checkpoints/final_model.pth")))
    assert final["epoch"] == epoch + 1 and final["lineage"][-1]["path"] == str(run_dir / "checkpoints" / "last.pth")
    assert "Resuming (full)" in cont.stdout + cont.stderr
    last = run_dir / "checkpoints" / "last.pth"
    assert_resumed(cont.stdout, last, load(last)["global_step"], final, epoch=epoch, batch=0)
