"""Batches in a fixed order per (seed, epoch), so a run can resume at any batch by index.

Resuming mid-epoch slices the epoch's batch list instead of replaying the loader, and the order never draws
from the global RNG, so restoring the RNG state is enough to make a resumed run match an uninterrupted one.

A run has one loader per split (`RunLoader`) for its whole life: its DataLoader workers are started once, at
the first epoch, and persist; before each epoch the main process sets that epoch's batch list in the batch
sampler (`EpochBatches`). A dataset whose class says `takes_keys = True` gets keys `(seed, epoch, index)` and
seeds that sample's augmentation from them, so a sample is the same in whichever worker (or process) reads it:
the epoch travels with each key, as the workers hold copies of the dataset. Other map-style datasets get plain
int indices; the in-memory `TensorSamples` is indexed a whole batch at a time, without a DataLoader.

Stopping is the main process's decision (project/runtime.StopRequest): the workers ignore SIGINT, SIGTERM,
SIGUSR1 and SIGUSR2, which SLURM, docker stop, Kubernetes and systemd send to every process of the job. The
signals are blocked in the main thread while the workers are forked (a child inherits the mask), so none can
reach a worker before it ignores them; the main process receives what arrived meanwhile once they are unblocked.
As workers ignore SIGTERM, which is how Python ends daemon processes at exit, a loader ends its workers itself
(`close()`, and at exit for a loader nobody closed): SIGKILL for one that did not stop when asked.
"""
import atexit
import contextlib
import logging
import signal
import threading
import weakref

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from project.errors import UnreadableFile

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
log = logging.getLogger("project.data")


class Skipped:
    """What a dataset returns for a sample it skips (data.on_bad_file=skip: its file cannot be read), with the
    reason. `collate` leaves it out of the batch; the main process warns once per file (`RunLoader`)."""

    def __init__(self, reason: str):
        self.reason = reason


def collate(samples: list) -> tuple:
    """(the batch of the samples read, the reasons of those skipped). A sample is skipped or not by its file
    alone, so a batch is the same whichever worker forms it: a resume skips the same samples at the same steps.
    A batch whose every sample was skipped stops the run as an unreadable file would."""
    kept = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [s.reason for s in samples if isinstance(s, Skipped)]
    if not kept:
        reasons = "; ".join(skipped)
        raise UnreadableFile(f"Every sample of a batch was skipped, as none of its files can be read ({reasons}); "
                             "a step needs at least one.")
    return default_collate(kept), skipped


class TensorSamples(Dataset):
    """An in-memory dataset of aligned tensors (images, targets, ...), indexed a whole batch at a time."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)


def batch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[torch.Tensor]:
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    return list(order.split(batch_size))


def takes_keys(dataset) -> bool:
    """The dataset is indexed by keys (seed, epoch, index), which seed the sample's augmentation."""
    return bool(getattr(dataset, "takes_keys", False))


class EpochBatches(Sampler):
    """The batch sampler of a run's DataLoader, in the main process: `set_epoch` sets the batches of an epoch
    (from batch `start` on), which the next `iter()` of the loader sends to the workers. Keyed datasets get
    (seed, epoch, index) keys, others int indices; `shard` maps a global batch's indices to this process's part."""

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool = True, keyed: bool = False, shard=None):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.keyed, self.shard = keyed, shard
        self.epoch, self.order, self.batches = None, [], []

    def set_epoch(self, epoch: int, start: int = 0) -> list[torch.Tensor]:
        order = batch_order(self.n, self.batch_size, self.seed, epoch, self.shuffle)[start:]
        if self.shard is not None:
            order = [self.shard(b) for b in order]
        self.epoch, self.order = epoch, order
        if self.keyed:
            self.batches = [[(self.seed, epoch, i) for i in b.tolist()] for b in order]
        else:
            self.batches = [b.tolist() for b in order]
        return order

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers' worker_init_fn: the stop signals are the main process's to act on. Ignored first,
    then unblocked (they were blocked while forking): one that arrived in between is discarded."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def forking():
    """While DataLoader workers are forked: the stop signals blocked in this thread (the children inherit the
    mask; this process gets what arrived meanwhile when they are unblocked), and torch's SIGCHLD check of the
    workers deferred to the end, so that a worker dying at once is reported after the loader holds its iterator
    (an error raised inside the iterator's construction would lose the workers it had started)."""
    from torch.utils.data._utils import signal_handling

    main = threading.current_thread() is threading.main_thread()
    deferred, check = [], None
    if main:
        signal_handling._set_SIGCHLD_handler()  # torch's, installed now (once per process) so that it is deferred
        check = signal.signal(signal.SIGCHLD, lambda signum, frame: deferred.append(signum))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if main:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL if check is None else check)
            if deferred and callable(check):
                check(signal.SIGCHLD, None)  # torch's: raises its worker error if a worker has died


_open = weakref.WeakSet()  # RunLoaders whose workers may run: ended at exit if nobody closed them


@atexit.register
def _close_open_loaders() -> None:
    """Runs before Python's own exit handling of daemon processes (SIGTERM, which workers ignore, then an endless
    join) and before torch's (registered earlier, so called later)."""
    if _open:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # workers ended here are no error
    for loader in list(_open):
        loader.close()


class RunLoader:
    """One split's batches for a whole run: `epoch(e, start)` iterates epoch e's batches from `start`.

    With workers, one DataLoader with persistent workers (forked at the first epoch, after `before_fork()`, e.g.
    waiting for the checkpoint writer thread); `close()` ends them. Validation is `seed=0, shuffle=False` and
    epoch 0: keys (0, 0, index)."""

    def __init__(self, dataset, batch_size: int, *, seed: int, shuffle: bool = True, num_workers: int = 0,
                 pin_memory: bool = False, shard=None, before_fork=None, persistent: bool = True):
        self.dataset, self.before_fork = dataset, before_fork
        self.sampler = EpochBatches(len(dataset), batch_size, seed=seed, shuffle=shuffle, keyed=takes_keys(dataset),
                                    shard=shard)
        self.loader = None
        self.died = []  # (pid, exit code) of workers found dead when closing: -N = killed by signal N
        self.ahead = None  # (epoch, iterator) started by prefetch()
        self.skipped = set()  # the reasons of the samples skipped so far, each warned about once
        if not isinstance(dataset, TensorSamples):  # the in-memory fast path: whole-batch indexing, no DataLoader
            self.loader = DataLoader(
                dataset, batch_sampler=self.sampler, num_workers=num_workers, pin_memory=pin_memory,
                worker_init_fn=ignore_stop_signals if num_workers else None, collate_fn=collate,
                persistent_workers=persistent and num_workers > 0,
                generator=torch.Generator().manual_seed(seed))  # worker seeds: never drawn from the global RNG

    @property
    def workers(self) -> list:
        """The worker processes, once started."""
        iterator = self.loader._iterator if self.loader is not None else None
        return list(getattr(iterator, "_workers", []))

    @property
    def forks(self) -> bool:
        """The next epoch starts worker processes (persistent workers: the first epoch only)."""
        return self.loader is not None and self.loader.num_workers > 0 and self.loader._iterator is None

    def epoch(self, epoch: int, start: int = 0):
        ahead, self.ahead = self.ahead, None
        if ahead is not None and (ahead[0], 0) == (epoch, start):
            return ahead[1]  # prefetched: its first batches are loaded or loading
        order = self.sampler.set_epoch(epoch, start)
        if self.loader is None:
            return (self.dataset[b] for b in order)
        if not self.forks:
            return self.read(iter(self.loader))  # the persistent workers get this epoch's keys
        if self.before_fork is not None:
            self.before_fork()
        _open.add(self)
        with forking():
            return self.read(iter(self.loader))

    def read(self, batches):
        """The batches of a DataLoader iterator, warning once about each sample skipped; a file that cannot be read
        is raised in this process as UnreadableFile with its own message (no worker traceback)."""
        try:
            for batch, skipped in batches:
                for reason in skipped:
                    if reason not in self.skipped:
                        self.skipped.add(reason)
                        log.warning("Skipped a sample (data.on_bad_file=skip): %s", reason)
                yield batch
        except UnreadableFile as e:
            raise UnreadableFile(e.text, e.path) from None

    def prefetch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch now, so that the workers load its first batches while the
        caller does something else (validates); the next `epoch(epoch)` takes it. Only for started workers."""
        if self.loader is not None and self.loader.num_workers and not self.forks:
            self.ahead = (epoch, self.epoch(epoch))

    def close(self) -> None:
        """End the workers; `died` lists those that had ended before (persistent workers end only here). Their
        pids are forgotten first, so torch's SIGCHLD handler does not raise again while the others exit. A worker
        still running after torch's shutdown (which ends stragglers with SIGTERM: ignored) is killed."""
        _open.discard(self)
        self.ahead = None
        iterator = self.loader._iterator if self.loader is not None else None
        if iterator is None:
            return
        self.loader._iterator = None
        forget_workers(iterator)
        ended = {w.pid for w in iterator._workers if w.exitcode is not None}
        try:
            iterator._shutdown_workers()
        finally:
            # ended before the shutdown, or killed while it ran (a kill -9 noticed only as a broken connection)
            self.died += [(w.pid, w.exitcode) for w in iterator._workers
                          if w.pid in ended or w.exitcode not in (None, 0)]
            for w in iterator._workers:
                if w.is_alive():
                    w.kill()
                    w.join(timeout=5)


def forget_workers(iterator) -> None:
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False


def is_worker_death(error: BaseException, loaders=()) -> bool:
    """torch's error for a DataLoader worker that died (killed by a signal, or exited without reporting), raised
    by its SIGCHLD handler anywhere in the main thread, or while waiting for a batch; or a broken connection while
    receiving a batch (a worker killed while handing over its shared memory) when closing one of `loaders` found
    a worker dead (the run's clean-up closes them before the error is judged)."""
    if isinstance(error, RuntimeError):
        return "DataLoader worker (pid" in str(error)
    return isinstance(error, (ConnectionError, EOFError)) and any(loader.died for loader in loaders)


def epoch_batches(dataset, batch_size: int, *, seed: int, epoch: int, start: int = 0, shuffle: bool = True,
                  num_workers: int = 0, pin_memory: bool = False, shard=None):
    """Batches start, start+1, ... of one epoch's order, from a loader made for this one epoch (its workers end
    with it; a run keeps a RunLoader instead). `shard` maps a global batch's indices to this process's part
    (several processes, one job): the order, hence the samples of each optimizer step, do not depend on how many
    processes share them."""
    loader = RunLoader(dataset, batch_size, seed=seed, shuffle=shuffle, num_workers=num_workers,
                       pin_memory=pin_memory, shard=shard, persistent=False)
    return loader.epoch(epoch, start)
