"""A checkpoint file written past the page cache (O_DIRECT), through one small buffer the writer keeps.

Why: a normal write() copies the file into page-cache pages the kernel allocates for it. For a 335 MB checkpoint on
the 2-core CPU VM that was 0.1 to 1.1 s of system CPU per save (new pages are dear in a VM, and a replaced file's
pages are freed again), taken from training at every epoch; the same bytes written O_DIRECT from a reused buffer
took about 12 ms of system CPU, and the whole background write, the copy into the buffer included, about 90 ms
(`python benchmarks/checkpoint_stall.py`, with and without --through-page-cache). torch.save has no O_DIRECT mode,
so `DirectFile` is the file object it writes to: it gathers torch's writes into an aligned buffer (whose pages
stay this process's between saves) and hands the device whole blocks; the last block is padded and the file
truncated to its true length.

Where the file system refuses O_DIRECT (tmpfs on older kernels, some FUSE and network mounts: EINVAL), or on a
system without it, the file is written through the page cache as before, with the same bytes.
"""
import errno
import fcntl
import mmap
import os
import threading
from contextlib import contextmanager

BLOCK = 4096  # O_DIRECT offsets and lengths: a multiple of the device's logical block (512 B or 4 KiB)
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere every write goes through the page cache
BUFFER = 16 << 20  # the staging buffer: torch's writes gathered into whole blocks

_buffer, _lock = None, threading.Lock()  # one page-aligned anonymous map per process, made at the first save


@contextmanager
def open_file(path):
    """A new file at `path` for torch.save to write, on the disk (fsynced) when the block ends without an error.
    The process's one staging buffer serves it; one file at a time."""
    global _buffer
    with _lock:
        if _buffer is None:
            _buffer = mmap.mmap(-1, BUFFER)
        f = DirectFile(create(path), _buffer)
        try:
            yield f
            f.finish()
        finally:
            f.close()


def create(path) -> int:
    """A new file at `path`, opened O_DIRECT where the file system allows it: its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags | O_DIRECT, 0o644)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    # no O_DIRECT on this file system (ramfs creates the file before it refuses: it is the empty one made just now,
    # never an older file's hard link, which O_EXCL keeps us from writing through)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


class DirectFile:
    """A write-only file object for torch.save (write, flush) that writes whole blocks from the staging buffer;
    `finish()` writes the rest, sets the file's length and fsyncs it; `close()` closes it, finished or not."""

    def __init__(self, fd: int, buffer: mmap.mmap):
        self.fd, self.buffer, self.view = fd, buffer, memoryview(buffer)
        self.filled = 0  # bytes of the buffer not written yet
        self.size = 0    # bytes of the file so far

    @property
    def direct(self) -> bool:
        return bool(O_DIRECT and fcntl.fcntl(self.fd, fcntl.F_GETFL) & O_DIRECT)

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        done = 0
        while done < len(data):
            n = min(len(data) - done, len(self.buffer) - self.filled)
            self.view[self.filled:self.filled + n] = data[done:done + n]
            self.filled += n
            done += n
            if self.filled == len(self.buffer):
                self._drain(self.filled)
        self.size += done
        return done

    def flush(self) -> None:
        """torch.save's; the bytes reach the disk at finish()."""

    def finish(self) -> None:
        """Write what is left (padded to a whole block), cut the file to its true length, fsync."""
        if self.filled:
            padded = -(-self.filled // BLOCK) * BLOCK
            self.view[self.filled:padded] = bytes(padded - self.filled)
            self._drain(padded)
            os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)

    def close(self) -> None:
        self.view.release()
        os.close(self.fd)

    def _drain(self, length: int) -> None:
        """Write the buffer's first `length` bytes (whole blocks) at the file's end; the buffer is empty after."""
        done = 0
        while done < length:
            try:
                written = os.write(self.fd, self.view[done:length])
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                # opened O_DIRECT but refused at the write (some FUSE and network file systems): the page cache
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~O_DIRECT)
                continue
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written
        self.filled = 0
