"""`python run.py ...` as a process forked from one that has imported torch and Hydra already (tests only).

The suite starts some three hundred short runs, and a fresh interpreter spends about 3 s of a 4 s tiny run importing
torch, torch._dynamo (which the first optimizer step imports) and Hydra: on 2 cores that was half of the suite's
CPU time. One server process per pytest worker imports them once and forks a child for each run. Each run is still a
process of its own (its pid, signals, exit status, stdout, stderr, environment and working directory; nothing of
the test's process) running run.py as `__main__`, started from a warm state instead of from scratch. What must be
read when an interpreter starts (an `env_extra` such as PYTHONPATH or CXX) gets a fresh interpreter instead, and so
do the tests that are about starting (the README's commands, signals, torchrun, sweeps): conftest.run_cli decides.
"""
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

def serve() -> None:
    """The server (this file run as a script): import once, then fork one child per request line on stdin and
    answer its pid, then its exit status, on stdout."""
    import runpy

    import hydra  # noqa: F401
    import numpy  # noqa: F401
    import omegaconf  # noqa: F401
    import torch._dynamo  # noqa: F401  (what the first optimizer step imports)
    import tqdm  # noqa: F401

    import project.loggers  # noqa: F401
    import project.recipe.train  # noqa: F401
    import project.rundirs.lock  # noqa: F401
    import project.tasks  # noqa: F401

    assert threading.active_count() == 1  # a fork copies one thread: nothing else may be running
    # the children's sys.path: their own PYTHONPATH and script folder, then the interpreter's (not this folder)
    own = {*os.environ.get("PYTHONPATH", "").split(os.pathsep), os.path.dirname(os.path.abspath(__file__))}
    base_path = [p for p in sys.path if p and p not in own]
    reply = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.close(reply.fileno())
            run_child(request, base_path, runpy)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        reply.flush()


def run_child(request: dict, base_path: list[str], runpy) -> None:
    """In the forked child: the request's stdin (none), stdout, stderr, directory, environment and sys.path, then
    run.py as __main__. Leaves through SystemExit, up through serve(): the interpreter's own exit (atexit, flushed
    streams, the exit code)."""
    for fd, (path, flags) in enumerate([(os.devnull, os.O_RDONLY), (request["stdout"], os.O_WRONLY),
                                        (request["stderr"], os.O_WRONLY)]):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(script), *extra, *base_path]
    runpy.run_path(script, run_name="__main__")
    sys.exit(0)


class Server:
    """One warm process per pytest worker; runs are forked from it one at a time (while it is busy: None)."""

    def __init__(self, root: Path):
        self.root, self.proc, self.lock, self.pending = root, None, threading.Lock(), b""

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd=self.root)
        self.pending = b""

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess | None:
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            with tempfile.TemporaryDirectory() as tmp:
                out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
                out.touch()
                err.touch()
                request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
                pid = self.answer(120)["pid"]
                try:
                    code = self.answer(timeout)["code"]
                except subprocess.TimeoutExpired:
                    os.kill(pid, 9)
                    self.answer(60)
                    raise subprocess.TimeoutExpired(argv, timeout) from None
                return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                                   err.read_text(errors="replace"))
        finally:
            self.lock.release()

    def answer(self, timeout: float) -> dict:
        """The server's next line, waiting at most `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise subprocess.TimeoutExpired("forked run", timeout)
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the forked-runs server ended (exit {self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


if __name__ == "__main__":
    serve()
