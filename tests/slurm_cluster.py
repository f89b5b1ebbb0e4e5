"""A real single-node SLURM cluster on localhost for the tests (scripts/slurm-local-up.sh, -down.sh).

tests/conftest.py imports the fixture, so every test module can ask for `slurm_cluster`. Where SLURM cannot run at
all (not root; neither apt-get nor an installed SLURM) it skips, except in CI as root, where it fails with that
reason (skip_guard.unavailable); a cluster that fails to start fails the tests that need it, with the start
script's output.

Several pytest sessions may share the machine (and the cluster, which is machine-wide): a session uses a running
cluster as it is, and the cluster is stopped only by the last session using it, and only if a test session
started it (one started by .ci/run or by hand is left running).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from skip_guard import unavailable

ROOT = Path(__file__).resolve().parents[1]
USERS = Path("/run/slurm-local-users")  # one file per pytest process using the cluster
STARTED_BY_TESTS = USERS / "started-by-pytest"


def cluster_up() -> bool:
    """True if slurmctld answers and the node can run jobs."""
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return state.strip() in ("idle", "mixed", "allocated", "completing")


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        unavailable("SLURM tests need root, to install slurm-wlm with apt-get and start its daemons on localhost")
    if not cluster_up():
        if not (shutil.which("apt-get") and shutil.which("dpkg")) and not shutil.which("slurmctld"):
            unavailable("SLURM tests need apt-get (Debian's slurm-wlm packages) or an installed SLURM")
        up = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local-up.sh")], capture_output=True, text=True,
                            timeout=900)
        if up.returncode != 0 or not cluster_up():  # a machine that can run SLURM but did not: the run fails
            pytest.fail(f"could not start the local SLURM cluster (scripts/slurm-local-up.sh exited "
                        f"{up.returncode}):\n{(up.stdout + up.stderr)[-3000:]}", pytrace=False)
        USERS.mkdir(exist_ok=True)
        STARTED_BY_TESTS.touch()
    USERS.mkdir(exist_ok=True)
    me = USERS / str(os.getpid())
    me.touch()
    yield
    me.unlink(missing_ok=True)
    others = [p for p in USERS.iterdir() if p.name.isdigit() and _alive(p.name)]
    if STARTED_BY_TESTS.exists() and not others:
        STARTED_BY_TESTS.unlink(missing_ok=True)
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local-down.sh")], capture_output=True, timeout=300)
