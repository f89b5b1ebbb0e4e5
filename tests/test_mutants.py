"""scripts/mutants.py (issue 26) runs by hand; here, in CI and in-process (no training), what would make it fail
for the wrong reason: a snippet a refactor moved (the mutant would be a no-op), a test it names that no longer
exists, a --list that does not run."""
import ast
import importlib.util
import re

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutants)


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_patches_todays_tree_once_and_compiles(mutant):
    text = (ROOT / mutant.file).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: its snippet is not in {mutant.file} exactly once"
    changed = mutants.mutated(text, mutant)
    assert changed != text
    compile(changed, mutant.file, "exec")  # a patch that breaks the syntax would "kill" for the wrong reason


def test_every_named_test_exists():
    """Each node id names a test function in its file (a parametrized one by its function)."""
    for mutant in mutants.MUTANTS:
        assert mutant.tests, f"{mutant.name} runs no test"
        for node in mutant.tests:
            file, function = re.fullmatch(r"(tests/\w+\.py)::(\w+)(?:\[.*\])?", node).groups()
            names = {n.name for n in ast.walk(ast.parse((ROOT / file).read_text())) if isinstance(n, ast.FunctionDef)}
            assert function in names, f"{mutant.name}: {node} does not exist"


def test_the_names_are_unique_and_every_state_entry_has_its_mutant():
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names)) and len(names) >= 15
    from project.state import RESTORES
    missing = [e for e in RESTORES["full"] if f"{e.replace('_', '-')}-not-restored" not in names]
    assert not missing, f"state entries without a mutant (add one to scripts/mutants.py): {missing}"


def test_a_snippet_not_found_once_is_an_error():
    mutant = mutants.MUTANTS[0]
    with pytest.raises(mutants.MutantError, match="0 times, not once"):
        mutants.mutated("nothing here", mutant)
    with pytest.raises(mutants.MutantError, match="2 times, not once"):
        mutants.mutated(mutant.old * 2, mutant)


def test_list_and_only(capsys):
    assert mutants.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in mutants.MUTANTS) and "test_latest_picks_the_newest_run" in out
    assert mutants.main(["--list", "--only", "restore-nothing,rng-not-restored"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")] == [
        "restore-nothing", "rng-not-restored"]
    assert mutants.main(["--only", "no-such-mutant"]) == 2
    assert "no mutant named no-such-mutant" in capsys.readouterr().err


DEMO = '''
import pytest

def test_fails():
    assert 1 == 2, "the promise broke"

@pytest.mark.parametrize("n", [1, 2])
def test_passes(n):
    pass

def test_skips():
    pytest.skip("no reason")

@pytest.fixture
def broken():
    raise RuntimeError("setup broke")

def test_errors(broken):
    pass
'''


def test_each_listed_test_must_fail_and_a_passing_one_is_named(tmp_path):
    """A real pytest run and its JUnit report: killed only when every listed test failed; a listed test that passed
    makes the mutant survive, named; a skip, a setup error or a test not run is no verdict (an error)."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_demo.py").write_text(DEMO)
    nodes = {name: f"tests/test_demo.py::{name}" for name in ("test_fails", "test_passes[2]", "test_skips",
                                                               "test_errors", "test_absent")}
    outcome = mutants.run_tests(tmp_path, ["tests/test_demo.py"])
    assert {n: outcome.results.get(n) for n in nodes.values()} == {
        nodes["test_fails"]: "failed", nodes["test_passes[2]"]: "passed", nodes["test_skips"]: "skipped",
        nodes["test_errors"]: "error", nodes["test_absent"]: None}
    assert "the promise broke" in outcome.why[nodes["test_fails"]]

    def mutant(*names):
        return mutants.Mutant("demo", "", "x.py", "a", "b", tuple(nodes[n] for n in names))

    assert mutants.judge(mutant("test_fails"), outcome) == "killed"
    assert mutants.judge(mutant("test_fails", "test_passes[2]"), outcome) == "survived"
    assert outcome.listed(mutant("test_fails", "test_passes[2]").tests, "passed") == [nodes["test_passes[2]"]]
    for unclear in ("test_skips", "test_errors", "test_absent"):
        with pytest.raises(mutants.MutantError, match=re.escape(nodes[unclear])):
            mutants.judge(mutant("test_fails", unclear), outcome)
