"""Trying a recipe before a long run (issue 18, part 1): trainer.limit_train_batches / limit_val_batches /
overfit_batches, the debug presets (fast, overfit, profile), and limited runs marked in their checkpoints, skipped by
resume.checkpoint=latest and labelled by project-compare. Every run is a real `python run.py`; the counts are those
the run really trained (optimizer steps in the checkpoint) and validated (the log; the validation loss recomputed
here on exactly the batches it should have used)."""
import json
import math
import re

import torch

from conftest import load, run_cli, TINY_DATA, train_tiny, training_rows

# TINY_DATA: 48 training samples (6 batches of 8) and 16 validation samples (2 batches), 32x32 images, seed 42
UNET_TINY = [*TINY_DATA, "model=unet", "model.base_channels=8"]


def rows(run_dir):
    return training_rows(run_dir)


def only_run_dir(root):
    """The one run dir a preset made under `root` (outputs/debug/<date>/<time>)."""
    (final,) = root.glob("*/*/checkpoints/final_model.pth")
    return final.parents[1]


def val_loss_on(run_dir, pick):
    """The loss of the run's final weights on the batches `pick(data)` returns, computed here from scratch: the
    run's own config and data builder, the objective the config names, the model in eval mode."""
    from project import phases, tasks
    from project.checkpoints.loading import load_model

    model, cfg = load_model(run_dir, "final")
    objective = phases.build_objective(cfg, phases.schedule_phases(cfg)[-1])
    batches = pick(tasks.build_data(cfg, augment=False))
    with torch.no_grad():
        return sum(objective(model, batch)[0].item() for batch in batches) / len(batches)


def test_limits_train_and_validate_only_the_first_batches(tmp_path):
    """limit_train_batches=0.5 (a fraction: 3 of 6 batches) and limit_val_batches=1 (a count: 1 of 3)."""
    run_dir = tmp_path / "outputs" / "limited"
    train_tiny(run_dir, "data.val_size=24", "trainer.limit_train_batches=0.5", "trainer.limit_val_batches=1",
               cwd=tmp_path)
    final = load(run_dir / "checkpoints" / "final_model.pth")
    assert final["global_step"] == 2 * 3, "2 epochs of 3 optimizer steps"
    assert final["limited"] == {"limit_train_batches": 0.5, "limit_val_batches": 1}
    log = (run_dir / "training.log").read_text()
    assert "each epoch trains 3 of 6 batches, each validation scores 1 of 3" in log
    assert log.count("(limited run: 3 training batches this epoch, 1 validation batches)") == 2
    # the last validation scored the final weights on the first validation batch (samples 0-7), not on all three
    logged = float(rows(run_dir)[-1]["val_loss"])
    first = val_loss_on(run_dir, lambda data: [data["val"][torch.arange(8)]])
    every = val_loss_on(run_dir, lambda data: [data["val"][torch.arange(i, i + 8)] for i in (0, 8, 16)])
    assert math.isclose(logged, first, rel_tol=1e-5), (logged, first)
    assert not math.isclose(logged, every, rel_tol=1e-4), "the check cannot tell one batch from three"


def test_overfit_batches_train_and_validate_epoch_1s_first_batches(tmp_path):
    """overfit_batches=2: the first 2 batches of epoch 1's order every epoch, validated on themselves; 2 epochs are
    far too few to fit them, so the verdict at the end must be the failing one."""
    from project.data.loader import batch_order

    run_dir = tmp_path / "outputs" / "overfit"
    train_tiny(run_dir, "trainer.overfit_batches=2", cwd=tmp_path)
    final = load(run_dir / "checkpoints" / "final_model.pth")
    assert final["global_step"] == 2 * 2 and final["limited"] == {"overfit_batches": 2}
    log = (run_dir / "training.log").read_text()
    assert "Overfitting 2 batches (16 samples)" in log
    assert log.count("(limited run: 2 training batches this epoch, 2 validation batches)") == 2
    # validation scored the training split (unaugmented) in epoch 1's order, its first 2 batches: samples that
    # are not in the validation split at all
    order = batch_order(48, 8, seed=42, epoch=0)[:2]
    logged = float(rows(run_dir)[-1]["val_loss"])
    assert math.isclose(logged, val_loss_on(run_dir, lambda data: [data["train"][b] for b in order]), rel_tol=1e-5)
    verdict = re.search(r"Overfit check FAILED: .*train loss ([\d.]+) \(epoch 1\) -> ([\d.]+) \(epoch 2\), "
                        r"([\d.]+)% of its first value", log)
    assert verdict and "The recipe cannot fit 2 batches, so it is broken" in log, log[-2000:]
    first, last = (float(r["train_loss"]) for r in rows(run_dir))
    assert math.isclose(float(verdict[3]), 100 * last / first, abs_tol=0.05) and last / first >= 0.1


def test_debug_overfit_fits_four_batches_of_the_default_model(tmp_path):
    """debug=overfit on the default recipe (model=unet, data=shapes, AdamW 2e-3) at 32x32 pixels (the default 64
    passes too, 4.0% of the first loss, but takes 4x as long): 50 epochs of the same 4 batches, a csv logger, no
    early stopping, and the verdict that the recipe fits them."""
    run_cli("debug=overfit", "data.image_size=32", "trainer.num_threads=1", cwd=tmp_path)
    run_dir = only_run_dir(tmp_path / "outputs" / "debug")
    final = load(run_dir / "checkpoints" / "final_model.pth")
    assert final["global_step"] == 50 * 4 and final["limited"] == {"overfit_batches": 4}
    assert final["config"]["model"]["_target_"] == "project.models.UNet" and not (run_dir / "wandb").exists()
    losses = [float(r["train_loss"]) for r in rows(run_dir)]
    assert len(losses) == 50 and losses[-1] < 0.1 * losses[0], losses
    log = (run_dir / "training.log").read_text()
    assert f"Overfit check passed: the train loss fell below 10% of its first value (train loss {losses[0]:.4f} " \
           f"(epoch 1) -> {losses[-1]:.4f} (epoch 50), {losses[-1] / losses[0]:.1%}" in log
    assert "The recipe can fit 4 batches." in log and "FAILED" not in log


def test_debug_fast_then_latest_skips_it_and_compare_labels_it(tmp_path):
    """A real run, then a newer debug=fast run: resume.checkpoint=latest continues the real one and says which it
    skipped; project-compare marks the debug run in its status column."""
    from project.commands.compare import compare

    full = tmp_path / "outputs" / "full"
    run_cli(*UNET_TINY, "trainer.max_epochs=1", f"hydra.run.dir={full}", cwd=tmp_path)
    run_cli("debug=fast", "trainer.num_threads=1", cwd=tmp_path)  # the default model and data, under outputs/debug/
    fast = only_run_dir(tmp_path / "outputs" / "debug")
    final = load(fast / "checkpoints" / "final_model.pth")
    assert final["epoch"] == 1 and final["global_step"] == 3 and len(rows(fast)) == 1
    assert final["limited"] == {"limit_train_batches": 3, "limit_val_batches": 2} and not (fast / "wandb").exists()
    assert "(limited run: 3 training batches this epoch, 2 validation batches)" in (fast / "training.log").read_text()

    cont = tmp_path / "outputs" / "cont"
    run_cli(*UNET_TINY, "trainer.max_epochs=1", "resume=reset_optimizer", "resume.checkpoint=latest",
            f"hydra.run.dir={cont}", cwd=tmp_path)
    log = (cont / "training.log").read_text()
    assert (f"resume.checkpoint=latest skips {fast}: a limited run (trainer.limit_train_batches=3, "
            f"trainer.limit_val_batches=2)") in log
    assert f"Resuming (reset_optimizer) from {full / 'checkpoints' / 'best_model.pth'}" in log
    assert load(cont / "checkpoints" / "final_model.pth")["lineage"][-1]["path"] == str(
        full / "checkpoints" / "best_model.pth")

    compare([str(full), str(fast)], str(tmp_path / "cmp"))
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    fast_rows = [line for line in table.splitlines() if line.startswith("|") and fast.name in line]
    full_rows = [line for line in table.splitlines() if line.startswith("|") and "| full " in line]
    assert fast_rows and all(r.rstrip().endswith("| done (limited: train 3, val 2 batches) |") for r in fast_rows)
    assert full_rows and all(re.search(r"\| done +\|$", r.rstrip()) for r in full_rows), table


def test_debug_profile_writes_a_chrome_trace_and_the_top_operators(tmp_path):
    run_cli("debug=profile", "data.image_size=32", "trainer.num_threads=1", cwd=tmp_path)
    run_dir = only_run_dir(tmp_path / "outputs" / "debug")
    trace = json.loads((run_dir / "profile" / "trace.json").read_text())
    events = trace["traceEvents"]
    steps = sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == [f"ProfilerStep#{i}" for i in range(4, 10)], "steps 5-10 (0-based 4-9), after wait 2 + warmup 2"
    assert any(e.get("name") == "aten::convolution_backward" for e in events)
    log = (run_dir / "training.log").read_text()
    table = log.split("the top 20 operators by self CPU time")[1].split("Self CPU time total")[0]
    rules = [i for i, line in enumerate(table.splitlines()) if set(line.strip()) == {"-", " "}]
    header, body = table.splitlines()[rules[0] + 1], table.splitlines()[rules[1] + 1:rules[2]]
    assert "Self CPU" in header and len(body) == 20 and "aten::convolution_backward" in table, table
    self_ms = [float(re.split(r"\s{2,}", line.strip())[2].removesuffix("ms").removesuffix("us")) for line in body
               if re.split(r"\s{2,}", line.strip())[2].endswith("ms")]
    assert self_ms == sorted(self_ms, reverse=True), "sorted by self CPU time"
    assert "ui.perfetto.dev" in log and "chrome://tracing" in log and str(run_dir / "profile" / "trace.json") in log
    assert load(run_dir / "checkpoints" / "final_model.pth")["global_step"] == 12


def test_bad_limits_are_refused_with_nothing_written(tmp_path):
    run_dir = tmp_path / "outputs" / "bad"
    proc = train_tiny(run_dir, "trainer.limit_train_batches=0", "trainer.limit_val_batches=1.5",
                      "trainer.overfit_batches=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "trainer.limit_train_batches=0 is out of range" in err and "trainer.limit_val_batches=1.5 is out" in err
    assert "trainer.overfit_batches=2 trains and validates on exactly those 2 batches" in err
    assert "Nothing was trained or written." in err and not run_dir.exists()

    proc = train_tiny(run_dir, "trainer.overfit_batches=7", cwd=tmp_path, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "trainer.overfit_batches=7, but the training split has only 6 batches" in err
    assert "choose at most trainer.overfit_batches=6" in err and not run_dir.exists()
