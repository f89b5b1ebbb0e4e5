"""The README's two commands and the continuation commands users type, verbatim, on a clean checkout; every other
command of README.md and docs/*.md run here, by the test named for it, or listed as manual with the reason."""
import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_continued_from, assert_resumed


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = readme_commands()
    assert test_cmd.endswith("-m pytest") and "pip install -e '.[test]'" in test_cmd
    assert main_cmd.endswith("run.py") and "pip install -e ." in main_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines


@pytest.mark.slow
def test_default_job_then_continuations_on_a_clean_checkout(tmp_path):
    """`python run.py`, then `python run.py resume=reset_optimizer model.dropout=0.25` (2 epochs), then
    `python run.py resume=full trainer.max_epochs=<more>`, typed as a user would in a fresh clone."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # what the clone holds is main's last commit; copy the working tree over it so uncommitted edits count too
    for rel in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split():
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    main_cmd, _ = readme_commands()
    assert main_cmd.split(" && ")[-1] == ".venv/bin/python run.py"

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb" / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb" / "config"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb" / "data")}  # the default logger is W&B: keep it offline here

    def python(*args):
        proc = subprocess.run([sys.executable, "run.py", *args], cwd=clone, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    python()
    (first,) = (clone / "outputs").glob("*/*/checkpoints/final_model.pth")
    parent = torch.load(first.parent / "best_model.pth")
    assert parent["epoch"] >= 1 and 0.6 <= parent["best_f_score"] <= 1, "the embedded default should show learning"
    rows = (first.parents[1] / "metrics.csv").read_text().splitlines()
    f_scores = [float(r.split(",")[header.index("val_f_score")]) for header in [rows[0].split(",")] for r in rows[1:]]
    assert max(f_scores[-4:]) > f_scores[0] + 0.05, f"val F-score did not clearly rise: {f_scores}"

    # the README's continuation as typed, held to 2 epochs: what it proves (the best weights, a fresh optimizer, the
    # new value) shows from its first epoch, and each of the default's 12 epochs costs the suite ~4 s
    out = python("resume=reset_optimizer", "model.dropout=0.25", "trainer.max_epochs=2")
    assert str(first.parent / "best_model.pth") in out and "model.dropout" in out
    (second,) = set((clone / "outputs").glob("*/*/checkpoints/final_model.pth")) - {first}
    latest = torch.load(second.parent / "last.pth")
    out = python("resume=full", f"trainer.max_epochs={latest['epoch'] + 2}")
    finals = sorted((clone / "outputs").glob("*/*/checkpoints/final_model.pth"))
    assert len(finals) == 3
    continued = torch.load(finals[-1])
    assert continued["epoch"] == latest["epoch"] + 2
    # it restored the latest run's last.pth (its position, weights and Adam state), not a retrain from scratch
    assert_resumed(out, second.parent / "last.pth", latest["global_step"], continued)
    assert_continued_from(continued, latest, lr=latest["config"]["optimizer"]["lr"])
    # resume=full continued the latest run (the dropout 0.25 one) as it was configured, not with the defaults
    assert continued["config"]["model"]["dropout"] == 0.25 and "model.dropout" not in out
    assert list((clone / "outputs").glob("*/*/wandb/offline-run-*")), "the default logger (W&B, offline) wrote nothing"


def test_the_readme_is_a_door_to_every_docs_page():
    """The README stays a landing page (issue 23: at most 250 lines); each page under docs/ is linked from it."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "the README is a landing page: move the details into a page of docs/"
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if f"](docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_module_paths_in_the_docs_exist():
    """Every `project/...` path and `project.x.y[.name]` the pages name is in the tree (a module moved or renamed
    is a page to update), read from the source, nothing imported."""
    for page in DOCS:
        text = page.read_text()
        for path in set(re.findall(r"\bproject/[\w/]*\w(?:\.py)?/?", text)):
            assert (ROOT / path).exists(), f"{page.name} names {path}, which is not in the tree"
        for dotted in set(re.findall(r"\bproject(?:\.\w+)+", text)):
            parts, module = dotted.split("."), None
            while parts and not module:  # the longest prefix that is a module or a package
                here = ROOT.joinpath(*parts)
                module = next((p for p in (here.with_suffix(".py"), here / "__init__.py") if p.is_file()), None)
                rest = dotted.split(".")[len(parts):]
                parts = parts[:-1] if not module else parts
            assert module, f"{page.name} names {dotted}, which is not a module"
            assert not rest or re.search(rf"\b{rest[0]}\b", module.read_text()), \
                f"{page.name} names {dotted}, but {module.relative_to(ROOT)} has no {rest[0]}"


# ---- every command of README.md and docs/*.md: run here, run by another test, or manual with a reason ----------
#
# A command is one line of a ```bash block (continuation lines joined, the trailing `# comment` dropped). Each must
# be (a) run here: every `python run.py ...` is composed with its overrides (each value of a swept list) and
# range-checked as run.py would before training; every project-* command's --help runs and lists each --option
# the docs type; (b) in COVERED: the test (or fixture) that runs the same command, whose source holds the
# command's distinctive parts; or (c) in MANUAL, with the reason no test can run it. A command added to a page
# without one of these, or a table entry whose command left the pages, fails test_every_documented_command_is_tested.

COVERED = {  # command -> ("tests/<file>::<function>", distinctive parts of that function's source)
    "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python run.py":
        ("test_readme.py::test_default_job_then_continuations_on_a_clean_checkout", ['".venv/bin/python run.py"']),
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest":
        ("test_readme.py::test_ci_runs_the_readme_test_command", ['"-m pytest"', "ci_lines"]),
    "python run.py":
        ("test_readme.py::test_default_job_then_continuations_on_a_clean_checkout", ["python()"]),
    "python run.py resume=reset_optimizer model.dropout=0.25":
        ("test_readme.py::test_default_job_then_continuations_on_a_clean_checkout",
         ['python("resume=reset_optimizer", "model.dropout=0.25", ']),
    "python run.py resume=full trainer.max_epochs=20":
        ("test_readme.py::test_default_job_then_continuations_on_a_clean_checkout",
         ['python("resume=full", f"trainer.max_epochs=']),
    "PYTHONPATH=/path/to/src python run.py hydra.searchpath=[file:///path/to/myconf] model=mynet "
    "resume=reset_optimizer resume.checkpoint=/path/to/their_best_model.pth":
        ("test_own_code.py::test_own_model_trains_and_continues_from_its_own_best_model",
         ['f"hydra.searchpath=[file://', '"resume=reset_optimizer"', "resume.checkpoint="]),
    # evaluate, predict, export
    "project-evaluate outputs/2026-11-27/12-00-00":
        ("test_evaluate.py::test_the_per_class_table_and_the_json", ['evaluate.main([str(run["dir"]), *NOW])']),
    "project-evaluate outputs/2026-11-27/12-00-00 --split test --tta flip":
        ("test_evaluate.py::test_flip_tta_and_image_f1_as_the_main_metric",
         ['evaluate.main([str(run["dir"]), "--split", "test", "--tta", "flip"']),
    "project-evaluate multirun/2026-11-27/12-00-00 --split test":
        ("test_evaluate.py::test_a_sweep_gets_the_score_as_a_column_and_a_heatmap",
         ['evaluate.main([str(sweep), "--split", "test"']),
    "project-evaluate their_best_model.pth model=custom model._target_=pkg.Net data=celebamask --data-root ~/faces":
        ("test_evaluate.py::test_a_foreign_file_with_overrides_scores_as_the_run",
         ['"theirs.pth"), "--split", "test", "--data-root"', '"data=celebamask"']),
    "project-predict outputs/2026-11-27/12-00-00 --images ~/faces/test/images --out masks --tta flip "
    "--zip submission.zip --solution --max-params 1821084":
        ("test_story.py::test_their_model_and_file_to_a_submission",
         ['"project.commands.predict"', '"--tta", "flip", "--zip"', '"--solution"', '"--max-params", "1821084"']),
    "project-export outputs/2026-11-27/12-00-00 --format onnx --out exported/":
        ("test_export.py::test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch", ['"--format", "onnx", "--out"']),
    "project-export outputs/2026-11-27/12-00-00 --format pt2 --out exported/":
        ("test_export.py::test_pt2_export_runs_any_batch_size", ['"--format", "pt2", "--out"']),
    "project-export outputs/2026-11-27/12-00-00 --format safetensors --out exported/ --ema off":
        ("test_export.py::test_safetensors_export_holds_the_validated_weights_and_what_using_them_needs",
         ['"--format", "safetensors", "--out"', '"--ema", "off"']),
    "project-export their_best_model.pth --format safetensors --out exported/ model=custom model._target_=pkg.Net "
    "data=celebamask":
        ("test_export.py::test_a_file_another_script_wrote_and_a_model_that_cannot_be_traced",
         ['"their.pth", "--format", "safetensors"', '"model=custom", "model._target_=']),
    # your own model and data, the story
    "project-preview --check-files data=celebamask data.root=$HOME/faces data.val_fraction=0.1":
        ("test_bad_files.py::test_a_truncated_jpeg_stops_after_saving_and_resume_ends_as_if_never_met",
         ['preview.main(["--check-files", *DATA, f"data.root={root}"])']),
    "project-preview data=celebamask data.root=$HOME/faces data.val_fraction=0.1 augment=face_parsing --n 8":
        ("test_folder_data.py::test_preview_draws_the_samples_training_sees",
         ["preview.main(", '"augment=face_parsing"', '"--n"']),
    "python -c \"from project.data import fake_faces; fake_faces.write('faces', train=200, test=20, size=128)\"":
        ("test_story.py::test_their_model_and_file_to_a_submission", ['fake_faces.write(tmp_path / "faces"']),
    "PYTHONPATH=examples python examples/their_pkg/train_their_way.py faces --out their_best_model.pth --epochs 6":
        ("test_story.py::test_their_model_and_file_to_a_submission", ['"train_their_way.py"', '"--epochs"']),
    "project-analyze their_best_model.pth":
        ("test_story.py::test_their_model_and_file_to_a_submission",
         ['tool("project.commands.analyze", str(tmp_path / "their_best_model.pth"))']),
    "PYTHONPATH=examples project-evaluate outputs/continued model._target_=their_pkg.their_model.MicroSegFormer":
        ("test_story.py::test_their_model_and_file_to_a_submission",
         ['tool("project.commands.evaluate", str(run), typed)', '"model._target_=their_pkg.their_model.MicroSegFormer"']),
    "PYTHONPATH=examples project-predict outputs/continued --images faces/test/images --out predictions --tta flip "
    "--zip submission.zip --solution --max-params 1821084 model._target_=their_pkg.their_model.MicroSegFormer":
        ("test_story.py::test_their_model_and_file_to_a_submission",
         ['"project.commands.predict", str(run), "--images"', '"--solution"', '"--max-params", "1821084"']),
    # the run directory, tracking and comparing
    "python -m project.commands.inspect outputs/2026-11-25/23-41-33/checkpoints/best_model.pth "
    "--diff outputs/2026-11-25/23-40-27":
        ("test_tools.py::test_inspect_diff_against_a_checkpoint_and_the_current_config",
         ['inspect.main([str(path), "--diff", str(sweep / "2")']),
    "python -m project.commands.analyze outputs/continued":
        ("test_tools.py::test_analyze_a_continuation_against_its_starting_weights", ["analyze.main([str(child)])"]),
    "python -m project.commands.compare multirun/2026-11-25/23-42-37":
        ("test_tools.py::test_compare_ranks_a_sweep_by_best_val_metric", ["compare.main([str(sweep)])"]),
    "project-compare multirun/2026-11-27/12-40-53":
        ("test_seeds.py::test_a_2x2x3_seed_sweep_is_a_2x2_table_and_heatmap_of_means",
         ["compare.main([str(seed_sweep)])"]),
    "project-lineage":
        ("test_lineage.py::test_the_family_tree_nodes_edges_groups_and_png", ["lineage.main([])"]),
    "project-lineage outputs/2026-11-27 multirun/2026-11-27/13-00-00 --out family.png":
        ("test_lineage.py::test_json_nodes_and_edges_exactly", ['lineage.main(["outputs", "multirun"', '"--out"']),
    "project-lineage --json":
        ("test_lineage.py::test_json_nodes_and_edges_exactly", ['"--json"']),
    # sweeps
    "project-sweep continue multirun/2026-11-24/10-00-00":
        ("test_sweep_continue.py::test_a_local_gpus_sweep_stopped_by_sigterm_is_continued",
         ['project_sweep("continue", sweep, cwd=tmp_path)']),
    "project-sweep continue multirun/2026-11-24/10-00-00 --launcher slurm hydra.launcher.partition=gpu":
        ("test_sweep_continue.py::test_slurm_continue_places_each_array_task_in_its_own_job_dir",
         ['project_sweep("continue", sweep, "--launcher", "slurm"']),
    "project-sweep continue multirun/2026-11-24/10-00-00 model.dropout=0.1,0.2,0.25":
        ("test_sweep_continue.py::test_basic_launcher_continue_extends_the_grid_and_restarts_a_half_made_job",
         ['project_sweep("continue", sweep, "model.dropout=0.05,0.1,0.2"']),
    "project-sweep continue multirun/2026-11-24/10-00-00 --dry-run":
        ("test_sweep_continue.py::test_a_local_gpus_sweep_stopped_by_sigterm_is_continued",
         ['project_sweep("continue", sweep, "--dry-run"']),
    "python scripts/mutants.py --list": ("test_mutants.py::test_list_and_only", ['mutants.main(["--list"])']),
}

BENCHMARK = "a benchmark, measured by hand for minutes to hours (tests/test_benchmarks.py runs each one's --help; " \
            "its options are checked here against the script)"
REAL_DATA = ("the course's real images, which the user clones (research use: never shipped or downloaded here, and no "
             "test may depend on them); tests/test_story.py runs the same commands on generated faces")
MANUAL = {  # command -> why no test runs it
    "python benchmarks/overhead.py --rounds 5 --epochs 4": BENCHMARK,
    "python benchmarks/overhead.py --rounds 7 --epochs 4 --setup gpu_features": BENCHMARK,
    "python benchmarks/checkpoint_stall.py --rounds 5": BENCHMARK,
    "python benchmarks/checkpoint_stall.py --rounds 5 --through-page-cache": BENCHMARK,
    "python benchmarks/throughput.py --models microsegformer --modes 32 --rounds 11": BENCHMARK,
    "python benchmarks/throughput.py --models microsegformer --modes 32 --rounds 11 --null": BENCHMARK,
    "python benchmarks/throughput.py --models swin_mmoe_story --modes 32 --rounds 3": BENCHMARK,
    "python benchmarks/parallel_sweep.py --jobs 2 --epochs 1 --rounds 3 --unlimited": BENCHMARK,
    "python benchmarks/parallel_sweep.py --jobs 2 --epochs 3 --rounds 2": BENCHMARK,
    "python benchmarks/chaos.py --kills 100": BENCHMARK,
    "python benchmarks/chaos.py --kills 10 --disk-full /mnt/small":
        BENCHMARK + "; it also needs a small tmpfs that the user mounts at the path they name",
    "python benchmarks/input_pipeline.py --images 128 --rounds 5": BENCHMARK,
    "python benchmarks/scaling.py": BENCHMARK,
    "python benchmarks/loss.py --rounds 9": BENCHMARK,
    "python benchmarks/folder_epoch.py --root ce7454-project1/data --limit 200 --image-size 128 --epochs 3 --rounds 3":
        BENCHMARK + " on an image folder the user names",
    "python benchmarks/folder_epoch.py --root ce7454-project1/data --limit 200 --image-size 128 --epochs 1 --rounds 3":
        BENCHMARK + " on an image folder the user names",
    "python benchmarks/predict_throughput.py": BENCHMARK,
    "python scripts/mutants.py": "every mutant against its tests: tens of minutes of training runs, too long for every "
                                 "CI run (tests/test_mutants.py checks each mutant's patch and --list)",
    "python scripts/mutants.py --only restore-nothing": "a few minutes of training runs, by hand (see above)",
    "python benchmarks/predict_throughput.py --tta flip": BENCHMARK,
    "python benchmarks/predict_throughput.py --device cuda": BENCHMARK + " on a GPU",
    "python benchmarks/throughput.py --device cuda --models microsegformer --modes 32 --image-size 256 "
    "--train-size 512 --batch-size 32 --epochs 3": BENCHMARK + " on a GPU",
    "python benchmarks/throughput.py --device cuda --models microsegformer --modes 32 --image-size 256 "
    "--train-size 512 --batch-size 32 --epochs 3 --float32-matmul-precision high": BENCHMARK + " on a GPU",
    "python benchmarks/throughput.py --device cuda --models microsegformer --modes 32 --image-size 256 "
    "--train-size 512 --batch-size 32 --epochs 3 --channels-last": BENCHMARK + " on a GPU",
    "git clone https://github.com/EasonAI-5589/ce7454-project1": REAL_DATA,
    "PYTHONPATH=examples python examples/their_pkg/train_their_way.py ce7454-project1/data --out their_best_model.pth "
    "--epochs 3 --size 128": REAL_DATA,
    "PYTHONPATH=examples project-predict outputs/continued --images ce7454-project1/data/test_public/images --out "
    "predictions --tta flip --zip submission.zip --solution --max-params 1821084 "
    "model._target_=their_pkg.their_model.MicroSegFormer": REAL_DATA,
    "wandb sync outputs/<date>/<time>/wandb/offline-run-*":
        "W&B's own command: it needs a W&B account and the network (tests/test_wandb.py checks the offline runs)",
    "torchrun --standalone --nproc_per_node=8 run.py model=swin_mmoe_story data.image_size=256":
        "8 GPUs (tests/test_distributed.py runs torchrun --standalone with 2 CPU processes)",
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 run.py ...":
        "two machines of 8 GPUs each, a host the user names",
}

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONSOLE = re.compile(r"^(?:project-(\w+)|python -m project\.commands\.(\w+))\b")
BENCH = re.compile(r"^python (benchmarks/\w+\.py)\b")
RUN_PY = re.compile(r"^(?:\w+=\S+ )*python run\.py\b")


def documented_commands() -> dict[str, list[str]]:
    """Every command line of every ```bash block of the README and docs/*.md -> the pages it is on."""
    found = {}
    for page in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = re.sub(r"\s+", " ", re.sub(r"\s+#\s.*$", "", line)).strip()
                if command:
                    found.setdefault(command, []).append(page.relative_to(ROOT).as_posix())
    return found


def shell_words(command: str) -> list[str]:
    """The words the shell passes on: $VARS expanded, ~ at a word's start, quotes removed (as bash does)."""
    return [os.path.expanduser(w) if w.startswith("~") else w for w in shlex.split(os.path.expandvars(command))]


def test_every_documented_command_is_tested():
    commands = documented_commands()
    assert len(commands) > 40, "the command collector found too little: has the ```bash fence changed?"
    untested = [f"{c}  ({', '.join(pages)})" for c, pages in commands.items()
                if not (RUN_PY.match(c) or c in COVERED or c in MANUAL)]
    assert not untested, ("commands in the docs that no test runs: run them in a test and map them in COVERED of "
                          "tests/test_readme.py, or list them in MANUAL with the reason:\n" + "\n".join(untested))
    stale = [c for c in [*COVERED, *MANUAL] if c not in commands]
    assert not stale, "entries of COVERED/MANUAL whose command is no longer in README.md or docs/:\n" + "\n".join(stale)
    assert not set(COVERED) & set(MANUAL)


@pytest.mark.parametrize("command", sorted(COVERED))
def test_covered_commands_are_run_by_their_test(command):
    """The named test exists and runs the command: its source holds the command's distinctive parts."""
    where, parts = COVERED[command]
    file, function = where.split("::")
    source = (ROOT / "tests" / file).read_text()
    node = next((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function),
                None)
    assert node is not None, f"{where} (which runs `{command}`) does not exist: map the command to its new test"
    body = ast.get_source_segment(source, node)
    missing = [p for p in parts if p not in body]
    assert not missing, f"{where} no longer holds {missing}: does it still run `{command}`?"


def test_console_commands_show_help_with_every_option_the_docs_use(capsys):
    """Each project-* command's --help runs (in this process: no start-up per command), and every --option a page
    types is one it has; each console script is the module `python -m project.commands.<name>` runs."""
    scripts = dict(re.findall(r"^\s+project-(\w+) = project\.commands\.(\w+):main$",
                              (ROOT / "setup.cfg").read_text(), re.M))
    assert scripts and all(name == module for name, module in scripts.items())
    used = {}
    for command in documented_commands():
        match = CONSOLE.match(command)
        if match:
            name = match[1] or match[2]
            assert name in scripts, f"`{command}`: there is no project-{name}"
            words = shell_words(command)[1 if match[1] else 3:]
            sub = words[:1] if name == "sweep" else []  # project-sweep continue ...
            used.setdefault((name, *sub), set()).update(w.split("=")[0] for w in words if w.startswith("--"))
    assert {name for name, *_ in used} == set(scripts), "a project-* command has no example in the docs"
    for (name, *sub), options in sorted(used.items()):
        module = importlib.import_module(f"project.commands.{name}")
        with pytest.raises(SystemExit) as exit_:
            module.main([*sub, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0 and "usage:" in text
        unknown = options - set(re.findall(r"--[\w-]+", text))
        assert not unknown, f"project-{name} {' '.join(sub)} has no {sorted(unknown)}, which the docs use"


def test_benchmark_options_the_docs_use_exist():
    """The benchmarks are MANUAL (measured by hand); the options their commands use are in the scripts."""
    for command in documented_commands():
        match = BENCH.match(command)
        if match:
            source = (ROOT / match[1]).read_text()
            options = {w.split("=")[0] for w in shell_words(command) if w.startswith("--")}
            assert all(f'"{o}"' in source for o in options), f"`{command}`: an option {match[1]} does not take"


def run_py_overrides(command: str) -> list[list[str]]:
    """The overrides of a `python run.py ...` command, once per value of its swept lists (the first value of each
    list, then the second, ...), without the environment, `-m` and the `...` that stands for more."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = shell_words(command)
    words = words[words.index("run.py") + 1:]
    overrides = [w for w in words if w not in ("-m", "...")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # e.g. data.root=~/x: the shell expands ~ only at a word's start, Hydra refuses it
        raise AssertionError(f"`{command}`: Hydra cannot parse its overrides (for ~ write $HOME): {e}") from e
    choices = [[f"{text.split('=', 1)[0]}={value}" for value in o.sweep_string_iterator()]
               if o.is_sweep_override() else [text] for o, text in zip(parsed, overrides)]
    return [[c[i % len(c)] for c in choices] for i in range(max((len(c) for c in choices), default=1))]


def test_every_run_py_command_composes_and_passes_the_config_checks():
    """`python run.py ...` as a page types it (a sweep: each value of its lists) composes with Hydra, the Hydra
    settings (launchers, sweepers) included, and passes run.py's range checks: what `--cfg job` would show."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from project.config_checks import check_config

    # a searchpath names the user's own folder (COVERED by test_own_code.py instead)
    commands = [c for c in documented_commands() if RUN_PY.match(c) and "hydra.searchpath=" not in c]
    assert len(commands) > 20
    composed = {tuple(o): c for c in commands for o in run_py_overrides(c)}  # each set of overrides once
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for overrides, command in composed.items():
            try:
                cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            except Exception as e:
                raise AssertionError(f"`{command}` does not compose with {list(overrides)}: {e}") from e
            with open_dict(cfg):
                del cfg["hydra"]
            check_config(cfg)
