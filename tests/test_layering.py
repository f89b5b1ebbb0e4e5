"""The layering rule (docs/architecture.md): the project-* commands (project/commands/) sit on top of the library,
and nothing else in project/ imports them, at the top of a module or inside a function.

Read from the source with ast, so an import behind an `if` or inside a function counts as much as one at the top,
and no module has to be imported (no torch) for the check.
"""
import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent / "project"
COMMANDS = "project.commands"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The modules an import statement names, relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    # `from project import commands` names the package through its attribute
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def imports_of_commands(path: Path, root: Path = PROJECT.parent) -> list[str]:
    """One line per import of the commands package in the file at `path` (a module of the package under `root`)."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        names = imported(node, module, path.name == "__init__.py")
        if any(n == COMMANDS or n.startswith(COMMANDS + ".") for n in names):
            bad.append(f"{path.relative_to(root)}:{node.lineno}: {module} imports "
                       f"{ast.unparse(node)!r}")
    return bad


def library_modules() -> list[Path]:
    commands = PROJECT / "commands"
    return sorted(p for p in PROJECT.rglob("*.py") if commands not in p.parents)


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The walk itself: top-level, function-level, `from project import commands` and relative imports count."""
    fake = tmp_path / "project" / "recipe"
    fake.mkdir(parents=True)
    source = ("import project.commands.lineage\n"
              "from project import commands, noise\n"
              "def f():\n    from project.commands.evaluate import after_fit\n"
              "def g():\n    from ..commands import text\n"
              "from project import noise\nfrom project.rundirs import lineage\n")
    (fake / "train.py").write_text(source)
    bad = imports_of_commands(fake / "train.py", root=tmp_path)
    assert [line.split(":")[1] for line in bad] == ["1", "2", "4", "6"]


def test_nothing_outside_the_commands_imports_them():
    modules = library_modules()
    assert len(modules) > 30  # the walk found the package
    bad = [line for path in modules for line in imports_of_commands(path)]
    assert not bad, ("project/commands/ is the top layer: library code must not import it (docs/architecture.md). "
                     "Move what these need into a library package:\n" + "\n".join(bad))


# The shape issue 23 set: a function fits on a screen (the training recipe's on a smaller one), a file is read in
# one sitting, and checkpoint files are read in one place (the stand-alone solution script aside: it runs
# without this package).
MAX_FUNCTION, MAX_RECIPE_FUNCTION, MAX_FILE, MAX_RECIPE_FILE = 60, 50, 500, 400
READS_CHECKPOINTS = {"torch.load", "load_file", "safe_open"}  # calls that open a checkpoint file
READER, STANDALONE = PROJECT / "checkpoints" / "files.py", PROJECT / "evaluation" / "solution_run.py"


def test_functions_and_files_fit_their_limits():
    too_long = []
    for path in sorted(PROJECT.rglob("*.py")):
        recipe = "recipe" in path.relative_to(PROJECT).parts
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > (MAX_RECIPE_FILE if recipe else MAX_FILE):
            too_long.append(f"{path.relative_to(PROJECT.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > (MAX_RECIPE_FUNCTION if recipe else MAX_FUNCTION):
                    too_long.append(f"{path.relative_to(PROJECT.parent)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split by job (docs/architecture.md):\n" + "\n".join(too_long)


def called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return f"{func.value.id}.{func.attr}" if isinstance(func.value, ast.Name) else func.attr
    return func.id if isinstance(func, ast.Name) else ""


def test_checkpoint_files_are_read_by_one_module():
    readers = [f"{path.relative_to(PROJECT.parent)}:{node.lineno} {called(node)}"
               for path in sorted(PROJECT.rglob("*.py")) if path not in (READER, STANDALONE)
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Call) and called(node) in READS_CHECKPOINTS]
    assert not readers, f"read checkpoint files through project/checkpoints/files.py: {readers}"
