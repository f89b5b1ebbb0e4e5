"""How long a checkpoint blocks training: a synchronous save vs the background writer.

    python benchmarks/checkpoint_stall.py [--rounds 5] [--model swin_mmoe_story] [--through-page-cache]

Builds the run as run.py does (+experiment=swin_admoe, so model=swin_mmoe_story with its AdamW state after one
optimizer step), then, alternating, times
  - synchronous: serialise the training state and write it atomically (fsync, rename), as the trainer did before
    the background writer: the training thread waits for all of it;
  - background: project.recipe.epoch_end.save() returns once the state is snapshotted to CPU memory; the write happens
    in the writer thread (its time is printed too, but training does not wait for it).
The stall ratio is background / synchronous (medians). Target: <= 0.20. The CPU time of the background write is what
it takes from training where the cores are busy; --through-page-cache writes as the trainer did before O_DIRECT.
"""
import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(model: str, tmp: Path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from project.recipe import loop, messages, setup
    from project.data.loader import epoch_batches

    overrides = ["+experiment=swin_admoe", f"model={model}", "schedule=single", "data.image_size=64",
                 "data.train_size=8", "data.val_size=4", "trainer.batch_size=4", "logger=csv"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run = setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), overrides, None, tmp, {})
    messages.announce(run)
    batch = next(iter(epoch_batches(run.data["train"], 4, seed=0, epoch=0)))
    loss, _ = loop.forward(run, batch)
    loss.backward()
    loop.optimizer_step(run, skip=False)  # AdamW now holds exp_avg and exp_avg_sq for every parameter
    return run


def synchronous(run) -> float:
    from project import state
    from project.checkpoints import files as checkpoint
    from project.recipe.epoch_end import summary_keys

    start = time.perf_counter()
    ckpt = {"format": checkpoint.FORMAT, **state.state_dicts(run.state)}
    ckpt.update(summary_keys(run, ckpt["early_stopping"]))
    checkpoint.save_atomic(ckpt, [run.ckpt_dir / "sync.pth"])
    return time.perf_counter() - start


def background(run) -> tuple[float, float, float]:
    """(training blocked, the write done, the CPU time the write took: the process's while this thread only waits)."""
    from project.recipe.epoch_end import save

    start = time.perf_counter()
    save(run, ["last.pth"])
    stall = time.perf_counter() - start
    before = resource.getrusage(resource.RUSAGE_SELF)
    run.writer.wait()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return stall, time.perf_counter() - start, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="swin_mmoe_story")
    parser.add_argument("--through-page-cache", action="store_true",
                        help="write as before O_DIRECT (project/checkpoints/direct_io.py): through the page cache")
    args = parser.parse_args()
    if args.through_page_cache:
        from project.checkpoints import direct_io

        direct_io.O_DIRECT = 0
    with tempfile.TemporaryDirectory() as tmp:
        run = build(args.model, Path(tmp))
        params = sum(p.numel() for p in run.model.parameters())
        sync, stall, written, cpu = [], [], [], []
        for _ in range(args.rounds):
            sync.append(synchronous(run))
            s, w, c = background(run)
            stall.append(s)
            written.append(w)
            cpu.append(c)
        size_mb = (run.ckpt_dir / "last.pth").stat().st_size / 2**20
    s, b, w = (statistics.median(x) for x in (sync, stall, written))
    print(f"model={args.model}: {params / 1e6:.1f}M parameters, checkpoint with AdamW state {size_mb:.0f} MB")
    print(f"median of {args.rounds}: synchronous save {s * 1000:.0f} ms | background: training blocked "
          f"{b * 1000:.0f} ms (write finished after {w * 1000:.0f} ms) | stall ratio {b / s:.3f}")
    print(f"the background write's CPU time (user + system): median {statistics.median(cpu) * 1000:.0f} ms "
          f"({min(cpu) * 1000:.0f}-{max(cpu) * 1000:.0f}), "
          f"{'through the page cache' if args.through_page_cache else 'O_DIRECT where the file system allows it'}")


if __name__ == "__main__":
    main()
