"""Progress of a long loop for a person: a tqdm bar on a terminal; plain lines where the stream is a file.

A bar redraws itself with carriage returns, which a SLURM log, `nohup` or a CI log keeps as one long line of
`\\r`-separated text. Where the stream is not a terminal, `track` writes a line each time another `every`
(10%) of the work is done, or `seconds` (30 s) after the previous line, and one at the end.
"""
import sys
import time


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Lines:
    """tqdm's update/close for a stream that is not a terminal: `desc: 40/100 img (40%), 12 s` lines."""

    def __init__(self, total: int, desc: str, unit: str, stream, every: float = 0.1, seconds: float = 30.0):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every, self.seconds, self.n, self.shown = every, seconds, 0, 0
        self.start = self.last = time.monotonic()

    def line(self) -> None:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n}/{self.total or '?'} {self.unit}{share}, {time.monotonic() - self.start:.0f} s",
              file=self.stream, flush=True)
        self.shown, self.last = self.n, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        step = max(1, int(self.total * self.every)) if self.total else None
        due = step is not None and self.n // step > self.shown // step
        if self.n < (self.total or 0) and (due or time.monotonic() - self.last >= self.seconds):
            self.line()

    def close(self) -> None:
        if self.n != self.shown or self.n == 0:
            self.line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:  # an error ends the loop with its own message, not a last progress line
            self.close()


def bar(total: int, desc: str, unit: str, stream=None, leave: bool = True):
    """A context manager with update(n): a tqdm bar on a terminal, `Lines` otherwise."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave, dynamic_ncols=True)
    return Lines(total, desc, unit, stream)


def track(iterable, total: int, desc: str, unit: str, stream=None, leave: bool = True):
    """Each item of `iterable`, with the progress shown as `bar` does."""
    with bar(total, desc, unit, stream, leave) as shown:
        for item in iterable:
            yield item
            shown.update(1)
