"""No silent skips in CI (issue 26): pytest hooks (tests/conftest.py imports them) and the one way a test says that
its machine lacks a capability.

CI runs the suite as root with CI=true, on a machine meant to have every capability the tests need (mount, a
local SLURM cluster). There a missing capability is a failure naming it (`unavailable`), and with CI=true a session
in which any test skipped fails too, unless the test and its reason are on tests/allowed_skips.txt. Without CI=true
skips stay skips: a developer's machine may lack root, mount or SLURM.
"""
import os
from pathlib import Path

import pytest

ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")
_skipped: list[tuple[str, str]] = []  # (test id, reason) of every skip in this session


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def unavailable(reason: str) -> None:
    """The test cannot run here because the machine lacks something (mount, SLURM): in CI as root, where it must
    not be missing, the test fails with `reason`; elsewhere it skips with it."""
    if in_ci() and os.geteuid() == 0:
        pytest.fail(f"{reason} (CI=true as root: this machine must be able to run it)", pytrace=False)
    pytest.skip(reason)


def allowed() -> dict[str, str]:
    """tests/allowed_skips.txt: test id (a parametrized test's id without its [params] covers them all) -> the
    only reason it may skip for. Lines are `<test id> | <reason>`; # starts a comment."""
    entries = {}
    for number, line in enumerate(ALLOWED_SKIPS.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            if "|" not in line:
                raise ValueError(f"{ALLOWED_SKIPS}:{number}: {line!r} is not `<test id> | <reason>`")
            test, reason = (part.strip() for part in line.split("|", 1))
            entries[test] = reason
    return entries


def unexpected(skipped: list[tuple[str, str]], allow: dict[str, str]) -> list[tuple[str, str]]:
    return [(test, reason) for test, reason in skipped if allow.get(test, allow.get(test.split("[")[0])) != reason]


def record(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report):
    record(report)  # a skip in setup (a fixture, skipif) or in the test


def pytest_collectreport(report):
    record(report)  # a whole module skipped while collected (importorskip, pytest.skip(allow_module_level=True))


def pytest_sessionfinish(session, exitstatus):
    if in_ci() and exitstatus == pytest.ExitCode.OK and unexpected(_skipped, allowed()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bad = unexpected(_skipped, allowed()) if in_ci() else []
    if bad:
        terminalreporter.section("unexpected skips (CI=true)", red=True)
        for test, reason in bad:
            terminalreporter.line(f"{test}: {reason}")
        terminalreporter.line(f"{len(bad)} test(s) skipped in CI that tests/{ALLOWED_SKIPS.name} does not allow: "
                              "give the machine what they need, or add `<test id> | <reason>` there with why it "
                              "may skip.")
