"""Framework overhead: the trainer vs a hand-written PyTorch loop doing the same training and validation.

    python benchmarks/overhead.py [--rounds 3] [--epochs 4] [--threads N] [--setup default|gpu_features]

Each measurement runs in a fresh process (so peak RSS is its own), trainer and plain loop alternate
(interleaved, so drift in machine load hits both alike), and the ratios use the medians. The CPU time (all of the
process's threads) is printed beside the wall time: on a machine shared with other jobs it moves far less; with
OpenMP threads that wait by spinning, --threads 1 keeps it cleaner still. The trainer runs with
everything on: a checkpoint every epoch (last.pth, checkpoint_epoch_N.pth, best_model.pth), metrics.csv,
training.log, train-set F-score (logger=csv: W&B's one-off start-up is left out). The plain loop is what one
writes by hand to do the same things: the same data, model, loss, optimizer and scheduler from the same config,
forward/backward/step, the train F-score sampled every trainer.log_every_n_steps steps, a validation pass with
the F-score per epoch, and torch.save of the weights and optimizer state every epoch.

--setup gpu_features turns on what GPU users turn on: trainer.precision=bf16-mixed, accumulate_grad_batches=2,
gradient_clip_val=1.0 and ema.decay=0.99; the plain loop then does the same by hand (autocast, a divided loss
per window, clip_grad_norm_, an AveragedModel EMA that validation uses).
"""
import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


SETUPS = {
    "default": [],
    "gpu_features": ["trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2",
                     "trainer.gradient_clip_val=1.0", "trainer.ema.decay=0.99"],
}


def compose(epochs: int, threads: int | None, setup: str = "default"):
    from hydra import compose as hydra_compose, initialize_config_dir

    # logger=csv: metrics.csv and training.log on; W&B's start-up (a few seconds, once) is not a per-step cost
    overrides = [f"trainer.max_epochs={epochs}", "trainer.save_interval=1", "trainer.keep_last=2", "logger=csv",
                 *SETUPS[setup]]
    if threads:
        overrides.append(f"trainer.num_threads={threads}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def run_trainer(cfg, work: Path) -> int:
    from project.recipe.train import train

    logging.basicConfig(filename=work / "training.log", level=logging.INFO)
    summary = train(cfg, work, search_dirs=[])
    return summary["epoch"]


def run_plain(cfg, work: Path) -> int:
    import torch
    from hydra.utils import instantiate
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from project.data.loader import epoch_batches
    from project.tasks import build_data
    from project.losses import CEDiceLoss
    from project.metrics import ConfusionMatrix
    from project.rng import seed_everything

    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(cfg.seed)
    data = build_data(cfg)  # the data config without its `task` declaration
    model = instantiate(cfg.model, **data["model_args"])
    loss_fn = CEDiceLoss(dice_weight=cfg.loss.dice_weight)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)
    ema = None if t.ema.decay is None else AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema.decay),
                                                         use_buffers=True)
    bf16 = str(t.precision) == "bf16-mixed"
    bs, k = t.batch_size, t.accumulate_grad_batches
    n, classes, step = -(-len(data["train"]) // bs), data["model_args"]["num_classes"], 0
    for epoch in range(t.max_epochs):
        model.train()
        train_scores = ConfusionMatrix(classes, "cpu")
        for i, (x, y) in enumerate(epoch_batches(data["train"], bs, seed=cfg.seed, epoch=epoch)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = loss_fn(out, y)
            (loss / min(k, n - i // k * k)).backward()
            if (i + 1) % k and i + 1 < n:
                continue
            step += 1
            if step % t.log_every_n_steps == 0 or i + 1 == n:
                train_scores.update(out, y)
            if t.gradient_clip_val is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.gradient_clip_val)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
        train_scores.compute()
        net = model if ema is None else ema.module
        net.eval()
        val_scores = ConfusionMatrix(classes, "cpu")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for x, y in epoch_batches(data["val"], bs, seed=0, epoch=0, shuffle=False):
                out = net(x)
                loss_fn(out, y)
                val_scores.update(out, y)
        scheduler.step(val_scores.compute()["f_score"])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "ema": None if ema is None else ema.state_dict()}, work / "last.pth")
    return t.max_epochs


def child(kind: str, epochs: int, threads: int | None, setup: str) -> None:
    cfg = compose(epochs, threads, setup)
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start, cpu = time.perf_counter(), time.process_time()
        done = (run_trainer if kind == "trainer" else run_plain)(cfg, Path(tmp))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"kind": kind, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": after.ru_maxrss / 1024,
                      "system_seconds": after.ru_stime - before.ru_stime,
                      "page_faults": after.ru_minflt - before.ru_minflt, "epochs": done}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--setup", choices=sorted(SETUPS), default="default")
    parser.add_argument("--child", choices=["trainer", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.epochs, args.threads, args.setup)

    results = {"trainer": [], "plain": []}
    for r in range(args.rounds):
        for kind in (("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")):
            cmd = [sys.executable, __file__, "--child", kind, "--epochs", str(args.epochs), "--setup", args.setup]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[kind].append(result)
            print(f"round {r + 1} {kind:7s} {result['seconds']:7.2f} s  CPU {result['cpu_seconds']:7.2f} s "
                  f"(system {result['system_seconds']:5.2f} s, {result['page_faults']:7d} page faults)  "
                  f"peak RSS {result['peak_rss_mb']:7.1f} MB", flush=True)
    t = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    c = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in results.items()}
    m = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in results.items()}
    print(f"\nmedian over {args.rounds} rounds, {args.epochs} epochs of the default config, setup {args.setup} "
          f"({results['trainer'][0]['epochs']} trained):")
    print(f"  time:        trainer {t['trainer']:.2f} s, plain {t['plain']:.2f} s, ratio {t['trainer'] / t['plain']:.3f}")
    print(f"  CPU time:    trainer {c['trainer']:.2f} s, plain {c['plain']:.2f} s, ratio {c['trainer'] / c['plain']:.3f} "
          "(every thread of the process: what other jobs on a shared machine disturb least)")
    print(f"  peak memory: trainer {m['trainer']:.0f} MB, plain {m['plain']:.0f} MB, ratio "
          f"{m['trainer'] / m['plain']:.3f}")


if __name__ == "__main__":
    main()
