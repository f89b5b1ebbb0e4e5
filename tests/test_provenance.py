"""What a run was made from (issue 18, part 3): every start appends the git commits of the working directory's
repository and of the project package's, whether they were dirty, a dirty tree's diff as code.diff, and the
versions, to environment.json; each checkpoint carries the same as its `provenance` key and project-inspect
shows it. Git being absent or refusing the directory is a recorded reason, never an error. Real processes,
real git repositories."""
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from conftest import ROOT, TINY, load, run_cli

ONE_EPOCH = [*TINY, "trainer.max_epochs=1"]
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",  # no safe.directory=* from anyone's config
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True,
                          text=True).stdout.strip()


def starts(run_dir) -> list[dict]:
    return json.loads((run_dir / "environment.json").read_text())


def inspect(path) -> str:
    proc = subprocess.run([sys.executable, "-m", "project.commands.inspect", str(path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    """A run started in a temporary git repository with an uncommitted change and an untracked file (the project
    itself on PYTHONPATH), then continued in the same run dir after the change was committed."""
    repo = tmp_path_factory.mktemp("experiment")
    git(repo, "init", "-q")
    (repo / "recipe.py").write_text("lr = 1e-3\n")
    git(repo, "add", "recipe.py")
    git(repo, "commit", "-q", "-m", "the recipe")
    (repo / "recipe.py").write_text("lr = 2e-3\n")   # uncommitted
    (repo / "idea.py").write_text("# untracked\n")
    run_dir = repo / "outputs" / "run"
    run_cli(*ONE_EPOCH, f"hydra.run.dir={run_dir}", cwd=repo, env_extra=GIT_ENV)
    first_commit = git(repo, "rev-parse", "HEAD")
    first_ckpt = load(run_dir / "checkpoints" / "last.pth")
    first_diff = (run_dir / "code.diff").read_text()
    git(repo, "add", "recipe.py", "idea.py")
    git(repo, "commit", "-q", "-m", "lr 2e-3")
    run_cli(*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=repo, env_extra=GIT_ENV)  # continues
    return {"repo": repo, "run_dir": run_dir, "first_commit": first_commit, "second_commit": git(repo, "rev-parse", "HEAD"),
            "first_ckpt": first_ckpt, "first_diff": first_diff}


def test_git_commit_dirty_flag_and_code_diff_are_recorded_at_every_start(dirty_run):
    repo, run_dir = dirty_run["repo"], dirty_run["run_dir"]
    first, second = starts(run_dir)  # one entry per start, appended
    code = first["code"]
    assert code["working_dir"]["root"] == str(repo) and code["working_dir"]["commit"] == dirty_run["first_commit"]
    assert code["working_dir"]["dirty"] is True
    # the run's own outputs/ is not a change to the code: one modified file, one untracked
    assert (code["working_dir"]["modified"], code["working_dir"]["untracked"]) == (1, 1)
    project_repo = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if project_repo.returncode == 0:  # the project is a checkout: its own commit, dirty or not
        assert code["project"]["commit"] == project_repo.stdout.strip() and code["project"]["root"] == str(ROOT)
    diff = dirty_run["first_diff"]
    assert code["diff"]["file"] == "code.diff" and not code["diff"]["truncated"]
    assert f"# repository {repo}, commit {dirty_run['first_commit']}" in diff
    assert "-lr = 1e-3\n+lr = 2e-3\n" in diff and "# untracked: idea.py\n" in diff and "outputs" not in diff.split(
        f"# repository {ROOT}")[0]
    # git apply takes the diff back: the working directory's section reproduces the uncommitted change
    section = diff.split(f"# repository {ROOT}")[0]
    clone = dirty_run["repo"].parent / "clone"
    git(dirty_run["repo"].parent, "clone", "-q", str(repo), str(clone))
    git(clone, "checkout", "-q", dirty_run["first_commit"])
    (clone / "section.diff").write_text(section)
    git(clone, "apply", "section.diff")
    assert (clone / "recipe.py").read_text() == "lr = 2e-3\n"

    assert first["versions"] == {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": metadata.version("torchvision"),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None, "hydra-core": metadata.version("hydra-core"), "omegaconf": metadata.version("omegaconf"),
        "wandb": metadata.version("wandb"), "project": metadata.version("project")}

    # the second start: committed, so clean; the first start's code.diff is kept as it was
    assert second["code"]["working_dir"]["commit"] == dirty_run["second_commit"]
    assert second["code"]["working_dir"]["dirty"] is False
    assert (run_dir / "code.diff").read_text() == diff
    if "diff" in second["code"]:  # only the project's own checkout is dirty now: its section, in its own file
        name = second["code"]["diff"]["file"]
        assert name == "code.start2.diff" and f"# repository {repo}" not in (run_dir / name).read_text()

    # the checkpoints carry the same, loadable with plain torch.load (weights_only=True)
    assert dirty_run["first_ckpt"]["provenance"] == {"code": first["code"], "versions": first["versions"]}
    last = load(run_dir / "checkpoints" / "last.pth")
    assert last["provenance"] == {"code": second["code"], "versions": second["versions"]}


def test_inspect_shows_the_commit_and_versions_of_a_checkpoints_run(dirty_run, tmp_path):
    out = inspect(dirty_run["run_dir"] / "checkpoints" / "last.pth")
    assert f"code         commit {dirty_run['second_commit']}" in out and "clean, in " + str(dirty_run["repo"]) in out
    assert f"torch {torch.__version__}" in out and f"hydra-core {metadata.version('hydra-core')}" in out
    assert f"wandb {metadata.version('wandb')}" in out and f"python {sys.version.split()[0]}" in out
    # a file written before checkpoints kept their provenance
    saved = load(dirty_run["run_dir"] / "checkpoints" / "last.pth")
    del saved["provenance"]
    torch.save(saved, tmp_path / "older.pth")
    old = inspect(tmp_path / "older.pth")
    assert "code         not recorded" in old and "versions     not recorded" in old


def test_git_absent_is_recorded_as_the_reason(tmp_path):
    empty_bin = tmp_path / "bin"  # a PATH on which there is no git
    empty_bin.mkdir()
    run_dir = tmp_path / "run"
    run_cli(*ONE_EPOCH, f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra={"PATH": str(empty_bin)})
    (start,) = starts(run_dir)
    for where in ("working_dir", "project"):
        entry = start["code"][where]
        assert entry["commit"] is None and entry["dirty"] is None, entry
        assert entry["reason"] == "git is not installed (not on PATH)", entry
    assert not (run_dir / "code.diff").exists()
    assert start["versions"]["torch"] == torch.__version__
    assert load(run_dir / "checkpoints" / "last.pth")["provenance"]["code"] == start["code"]
    out = inspect(run_dir)
    assert "no commit (git is not installed (not on PATH))" in out and f"torch {torch.__version__}" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="making a repository another user owns needs root")
def test_a_repository_git_refuses_is_recorded_as_the_reason(tmp_path):
    repo = tmp_path / "theirs"
    repo.mkdir()
    git(repo, "init", "-q")
    for path in [repo, *repo.rglob("*")]:
        os.chown(path, 12345, 12345)  # another user's checkout: git says "dubious ownership"
    run_dir = tmp_path / "run"  # outside the repository: nothing of ours is written into it
    run_cli(*ONE_EPOCH, f"hydra.run.dir={run_dir}", cwd=repo, env_extra=GIT_ENV)
    entry = starts(run_dir)[0]["code"]["working_dir"]
    assert entry["commit"] is None and "dubious ownership" in entry["reason"] and "safe.directory" in entry["reason"]
