"""Training throughput (images/s): the trainer vs a plain PyTorch loop, at 32, bf16-mixed and compiled.

    python benchmarks/throughput.py [--rounds 3] [--epochs 3] [--models microsegformer swin_mmoe_story]
                                    [--modes 32 bf16 compile] [--device auto] [--image-size 64] [--train-size 256]
                                    [--float32-matmul-precision high] [--channels-last] [--cudnn-benchmark]

For each model and mode, the run is built as run.py builds it; the trainer runs its own epoch (train_epoch and
end_epoch: validation with its metrics, metrics.csv, last.pth and best_model.pth in the background writer, as
configured by default), the plain loop forward/backward/step over the same batches plus a validation pass
(loss only) and no checkpoint: the lower bound. Epoch 1 is a warm-up (torch.compile compiles there) and is not timed; images/s
is (epochs - 1) * train images / time. The trainer's clock stops when its last epoch has handed its checkpoint to
the writer: each timed epoch trains while the previous epoch's checkpoint is written, as in any longer run; the
write of the last one, which overlaps no training, is waited for after the clock and printed on its own. `compile` is trainer.compile=true with the inductor backend, in fp32.
Each configuration is measured --rounds times, the trainer and the plain loop interleaved (which goes first
alternates by round, so a drift in the machine's speed hits both alike); the table gives each one's median and
spread (min-max over the rounds), the median of the rounds' ratios (each round's two loops ran minutes apart at
most: the figure to quote on a machine whose speed drifts, as a shared VM's does by 10-25 % over minutes) and the
ratio of the medians. A difference smaller than the spreads is noise.
model=swin_mmoe_story is the story's network (fine-tuning, schedule=single) at --image-size.
--null runs the plain loop in both columns (an A/A run): how far from 1.000 the machine's noise alone moves the
ratio with these rounds, the floor below which no difference can be called. --without-saves replaces project.recipe.epoch_end.save by a no-op in the trainer (a diagnostic: how much of the gap to the
plain loop is the checkpoint writing).
The GPU switches apply to every mode and to both loops: --float32-matmul-precision (trainer.float32_matmul_precision:
high = TF32, medium = bf16 matmuls), --channels-last (trainer.channels_last: model and inputs in channels-last
memory format), --cudnn-benchmark (trainer.benchmark: cuDNN autotuning). Compare a switch by running twice, with
and without it, on the same machine.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"32": [], "bf16": ["trainer.precision=bf16-mixed"], "compile": ["trainer.compile=true"]}
MODELS = {"microsegformer": ["model=microsegformer"],
          "swin_mmoe_story": ["+experiment=swin_admoe", "model=swin_mmoe_story", "schedule=single"]}


def switches(args) -> list[str]:
    """The trainer's GPU switches the flags ask for, as overrides."""
    return ([f"trainer.float32_matmul_precision={args.float32_matmul_precision}"] if args.float32_matmul_precision
            else []) + (["trainer.channels_last=true"] if args.channels_last else []) + (
            ["trainer.benchmark=true"] if args.cudnn_benchmark else [])


def describe_switches(args) -> str:
    named = ([f"float32 matmul {args.float32_matmul_precision}"] if args.float32_matmul_precision else []) + (
        ["cuDNN benchmark"] if args.cudnn_benchmark else [])
    return ", ".join((["channels-last"] if args.channels_last else []) + named) or "none"


def compose(model: str, mode: str, args):
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = [*MODELS[model], *MODES[mode], *switches(args), f"data.image_size={args.image_size}",
                 f"data.train_size={args.train_size}", f"data.val_size={args.train_size // 4}",
                 f"trainer.max_epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 f"trainer.device={args.device}", "logger=csv"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides), overrides


def trainer(cfg, overrides, tmp: Path, saves: bool = True) -> tuple[float, float]:
    """Seconds of the timed epochs, and of the wait for the last checkpoint's write after them."""
    from omegaconf import OmegaConf

    from project.recipe import epoch_end, loop, messages, setup
    from project.runtime import StopRequest

    if not saves:
        epoch_end.save = lambda run, files: None
    run = setup.setup(cfg, OmegaConf.to_container(cfg, resolve=True), overrides, None, tmp, {})
    messages.announce(run)
    run.stop = StopRequest()
    try:
        start = None
        for epoch in range(cfg.trainer.max_epochs):
            if epoch == 1:
                sync(run.device)
                start = time.perf_counter()
            loop.train_epoch(run, epoch)
            epoch_end.end_epoch(run, epoch)
        sync(run.device)
        seconds = time.perf_counter() - start
        # steady state: each timed epoch trained while the previous epoch's checkpoint was written; the last one's
        # write overlaps no training (a run waits for it once, at its end) and is timed on its own
        run.writer.wait()
        return seconds, time.perf_counter() - start - seconds
    finally:
        run.stop.close()


def plain(cfg, overrides, tmp: Path) -> float:
    import torch
    from hydra.utils import instantiate

    from project.data.loader import epoch_batches
    from project.tasks import build_data
    from project.rng import seed_everything
    from project.runtime import apply_switches, pick_device, to_channels_last
    from project.config_checks import AUTOCAST_DTYPES

    t = cfg.trainer
    device = pick_device(t.device)
    apply_switches(t)  # the same matmul precision and cuDNN autotuning as the trainer's run
    seed_everything(cfg.seed)
    data = build_data(cfg)  # the data config without its `task` declaration
    model = instantiate(cfg.model, **data["model_args"]).to(device)
    if t.channels_last:
        to_channels_last(model)  # the weights, and each 4-D input on its way in
    net = torch.compile(model, backend=t.compile_backend) if t.compile else model
    objective = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    dtype = AUTOCAST_DTYPES[str(t.precision)]
    start = None
    for epoch in range(t.max_epochs):
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        net.train()
        for batch in epoch_batches(data["train"], t.batch_size, seed=cfg.seed, epoch=epoch):
            batch = tuple(b.to(device, non_blocking=True) for b in batch)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = objective(net, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        net.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for batch in epoch_batches(data["val"], t.batch_size, seed=0, epoch=0, shuffle=False):
                objective(net, tuple(b.to(device, non_blocking=True) for b in batch))
    sync(device)
    return time.perf_counter() - start


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def describe_device(name: str) -> str:
    import torch

    if name != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each loop, interleaved")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--without-saves", action="store_true")
    parser.add_argument("--null", action="store_true",
                        help="the plain loop in the trainer's column too: the spread the machine alone gives the ratio")
    parser.add_argument("--float32-matmul-precision", choices=["highest", "high", "medium"], default=None,
                        help="trainer.float32_matmul_precision (default: torch's, highest)")
    parser.add_argument("--channels-last", action="store_true", help="trainer.channels_last=true")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="trainer.benchmark=true (cuDNN autotuning)")
    args = parser.parse_args()
    print(f"device: {describe_device(args.device)}; {args.train_size} train images of {args.image_size} px, "
          f"batch {args.batch_size}, epochs 2-{args.epochs} timed{', trainer WITHOUT checkpoint writes' if args.without_saves else ''}"
          f"{'; A/A: the plain loop in both columns' if args.null else ''}; "
          f"switches: {describe_switches(args)}")
    print(f"{args.rounds} rounds, trainer and plain loop interleaved; img/s as median (min-max)")
    print("| model | mode | trainer img/s | plain img/s | ratio (median of rounds) | ratio of medians | rounds' ratios "
          "| last write, s |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for mode in args.modes:
            ours, theirs, last_writes = measure(model, mode, args)
            ratios = [a / b for a, b in zip(ours, theirs)]
            print(f"| {model} | {mode} | {spread(ours)} | {spread(theirs)} | {statistics.median(ratios):.3f} | "
                  f"{statistics.median(ours) / statistics.median(theirs):.3f} | "
                  f"{' '.join(f'{r:.3f}' for r in ratios)} | {statistics.median(last_writes):.2f} |", flush=True)


def measure(model: str, mode: str, args) -> tuple[list[float], list[float], list[float]]:
    """img/s of the trainer and of the plain loop, one per round, interleaved; the trainer's wait for its last write."""
    cfg, overrides = compose(model, mode, args)
    images = (args.epochs - 1) * args.train_size
    ours, theirs, last_writes = [], [], []
    for round_ in range(args.rounds):
        order = ["trainer", "plain"] if round_ % 2 == 0 else ["plain", "trainer"]
        for which in order:
            with tempfile.TemporaryDirectory() as work:
                if which == "trainer" and args.null:  # an A/A run: the plain loop in the trainer's place
                    ours.append(images / plain(cfg, overrides, Path(work)))
                    last_writes.append(0.0)
                elif which == "trainer":
                    seconds, last_write = trainer(cfg, overrides, Path(work), saves=not args.without_saves)
                    ours.append(images / seconds)
                    last_writes.append(last_write)
                else:
                    theirs.append(images / plain(cfg, overrides, Path(work)))
    return ours, theirs, last_writes


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


if __name__ == "__main__":
    main()
