"""tests/skip_guard.py on a tiny generated suite, run by pytest in a subprocess: with CI=true a skip that
tests/allowed_skips.txt does not list (test and reason) fails the session; without CI skips stay skips; a missing
capability (skip_guard.unavailable) fails the test in CI as root."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SUITE = {
    "test_mine.py": '''
        import pytest
        from skip_guard import unavailable

        def test_runs():
            pass

        def test_skips_for_no_listed_reason():
            pytest.skip("the machine is slow today")

        @pytest.mark.skipif(True, reason="a marker skip")
        def test_marked():
            pass

        def test_without_mount():
            unavailable("mount -t tmpfs failed: permission denied")
    ''',
    "test_needs_a_module.py": '''
        import pytest

        pytest.importorskip("no_such_module_anywhere")
    ''',
    # the same test id as the listed one in the real suite
    "test_bad_input.py": '''
        import pytest

        def test_cuda_asked_for_but_absent():
            pytest.skip("this machine has a GPU")
    ''',
}


def pytest_run(tmp_path, *tests, ci: bool, suite=SUITE) -> subprocess.CompletedProcess:
    """pytest on `suite` written under tmp_path/tests, with the hooks loaded as tests/conftest.py loads them."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the root dir: test ids are tests/<file>::<name>
    (tmp_path / "conftest.py").write_text(
        "from skip_guard import pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish, "
        "pytest_terminal_summary\n")
    (tmp_path / "tests").mkdir(exist_ok=True)
    for name, text in suite.items():
        (tmp_path / "tests" / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"PYTHONPATH": str(ROOT / "tests"), **({"CI": "true"} if ci else {})})
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", *tests], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_an_unlisted_skip_fails_the_session_in_ci_and_only_there(tmp_path):
    tests = ["tests/test_mine.py::test_runs", "tests/test_mine.py::test_skips_for_no_listed_reason",
             "tests/test_mine.py::test_marked", "tests/test_needs_a_module.py"]
    ci = pytest_run(tmp_path, *tests, ci=True)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "1 passed, 3 skipped" in ci.stdout and "unexpected skips (CI=true)" in ci.stdout, ci.stdout
    assert "tests/test_mine.py::test_skips_for_no_listed_reason: the machine is slow today" in ci.stdout, ci.stdout
    assert "tests/test_mine.py::test_marked: a marker skip" in ci.stdout, ci.stdout
    assert "tests/test_needs_a_module.py: could not import 'no_such_module_anywhere'" in ci.stdout, ci.stdout
    local = pytest_run(tmp_path, *tests, ci=False)
    assert local.returncode == 0 and "1 passed, 3 skipped" in local.stdout, local.stdout + local.stderr
    assert "unexpected skips" not in local.stdout, local.stdout


def test_a_listed_skip_passes_in_ci_but_only_for_its_reason(tmp_path):
    listed = pytest_run(tmp_path / "listed", "tests/test_bad_input.py", ci=True)
    assert listed.returncode == 0 and "1 skipped" in listed.stdout, listed.stdout + listed.stderr
    other = {"test_bad_input.py": SUITE["test_bad_input.py"].replace("this machine has a GPU", "no time")}
    unlisted = pytest_run(tmp_path / "other", "tests/test_bad_input.py", ci=True, suite=other)
    assert unlisted.returncode == 1, unlisted.stdout + unlisted.stderr
    assert "tests/test_bad_input.py::test_cuda_asked_for_but_absent: no time" in unlisted.stdout, unlisted.stdout


def test_a_missing_capability_fails_in_ci_as_root_and_skips_elsewhere(tmp_path):
    test = "tests/test_mine.py::test_without_mount"
    local = pytest_run(tmp_path, test, ci=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout + local.stderr
    ci = pytest_run(tmp_path, test, ci=True)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    if os.geteuid() == 0:  # CI's case: the test itself fails, naming what is missing
        assert "1 failed" in ci.stdout and "mount -t tmpfs failed: permission denied (CI=true as root" in ci.stdout
    else:  # CI=true but not root: a skip, which the session does not accept
        assert "1 skipped" in ci.stdout and "unexpected skips (CI=true)" in ci.stdout, ci.stdout
