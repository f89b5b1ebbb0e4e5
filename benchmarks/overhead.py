"""Framework overhead: the trainer vs a hand-written PyTorch loop doing the same training and validation.

    python benchmarks/overhead.py [--rounds 3] [--epochs 4] [--threads N]

Each measurement runs in a fresh process (so peak RSS is its own), trainer and plain loop alternate
(interleaved, so drift in machine load hits both alike), and the ratios use the medians. The trainer runs with
everything on: a checkpoint every epoch (last.pth, checkpoint_epoch_N.pth, best_model.pth), metrics.csv,
training.log, train-set F-score (logger=csv: W&B's one-off start-up is left out). The plain loop is what one writes by hand: the same data, model, loss,
optimizer and scheduler from the same config, forward/backward/step, and a validation pass per epoch.
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


def compose(epochs: int, threads: int | None):
    from hydra import compose as hydra_compose, initialize_config_dir

    # logger=csv: metrics.csv and training.log on; W&B's start-up (a few seconds, once) is not a per-step cost
    overrides = [f"trainer.max_epochs={epochs}", "trainer.save_interval=1", "trainer.keep_last=2", "logger=csv"]
    if threads:
        overrides.append(f"trainer.num_threads={threads}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def run_trainer(cfg, work: Path) -> int:
    from project.train import train

    logging.basicConfig(filename=work / "training.log", level=logging.INFO)
    summary = train(cfg, work, search_dirs=[])
    return summary["epoch"]


def run_plain(cfg, work: Path) -> int:
    import torch
    from hydra.utils import instantiate

    from project.data.loader import epoch_batches
    from project.losses import CEDiceLoss
    from project.rng import seed_everything

    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, **data["model_args"])
    loss_fn = CEDiceLoss(dice_weight=cfg.loss.dice_weight)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer)
    bs = cfg.trainer.batch_size
    for epoch in range(cfg.trainer.max_epochs):
        model.train()
        for x, y in epoch_batches(data["train"], bs, seed=cfg.seed, epoch=epoch):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in epoch_batches(data["val"], bs, seed=0, epoch=0, shuffle=False):
                out = model(x)
                loss_fn(out, y)
                correct += (out.argmax(1) == y).sum()
                total += y.numel()
        scheduler.step((correct / total).item())
    return cfg.trainer.max_epochs


def child(kind: str, epochs: int, threads: int | None) -> None:
    cfg = compose(epochs, threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = (run_trainer if kind == "trainer" else run_plain)(cfg, Path(tmp))
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_rss_mb": peak_mb, "epochs": done}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=["trainer", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.epochs, args.threads)

    results = {"trainer": [], "plain": []}
    for r in range(args.rounds):
        for kind in (("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")):
            cmd = [sys.executable, __file__, "--child", kind, "--epochs", str(args.epochs)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[kind].append(result)
            print(f"round {r + 1} {kind:7s} {result['seconds']:7.2f} s  peak RSS {result['peak_rss_mb']:7.1f} MB",
                  flush=True)
    t = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    m = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in results.items()}
    print(f"\nmedian over {args.rounds} rounds, {args.epochs} epochs of the default config "
          f"({results['trainer'][0]['epochs']} trained):")
    print(f"  time:        trainer {t['trainer']:.2f} s, plain {t['plain']:.2f} s, ratio {t['trainer'] / t['plain']:.3f}")
    print(f"  peak memory: trainer {m['trainer']:.0f} MB, plain {m['plain']:.0f} MB, ratio "
          f"{m['trainer'] / m['plain']:.3f}")


if __name__ == "__main__":
    main()
