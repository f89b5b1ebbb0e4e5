"""Prediction throughput: images/s of project-predict's loop for the default model at 512x512.

Trains nothing. The model is the one `python run.py` builds by default (model=unet: base_channels 16, depth 2),
composed from conf/ with `data=celebamask` (19 classes, image_size 512), its weights as initialised. The images
are generated 512x512 JPEG faces (project.data.fake_faces). What is timed is project-predict's own loop
(project.commands.predict.run_model): decode, resize to the training size, normalise, forward (twice with
--tta flip), probabilities back to the image's size, argmax, and the mask PNG written; one batch is run before
the clock starts. The machine's load average (uptime) is printed before and after, since a shared CPU changes
the figure.

    python benchmarks/predict_throughput.py                      # 16 images, batch 8, CPU
    python benchmarks/predict_throughput.py --tta flip --images 8 --threads 2
    python benchmarks/predict_throughput.py --device cuda --images 64
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def build(size: int, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from project import tasks
    from project.checkpoints import loading

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=celebamask", f"data.image_size={size}", *overrides])
    classes = list(cfg.data.classes)
    model = tasks.build_model(cfg, {"model_args": {"num_classes": len(classes), "in_channels": 3},
                                    "task": "segmentation"})
    model.eval()
    info = loading.model_card(cfg, {"classes": classes})
    return cfg, model, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image and training size in pixels (default 512)")
    parser.add_argument("--images", type=int, default=16, help="images timed (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8, as "
                        "project-predict)")
    parser.add_argument("--tta", choices=["flip"], help="flip: also the mirror image, as project-predict --tta flip")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the images; the median is "
                        "reported (default 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides for the model (default: model=unet as run.py)")
    args = parser.parse_args()

    import torch

    from project.data import fake_faces
    from project.commands import predict
    from project.runtime import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cfg, model, info = build(args.size, args.overrides)
    model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fake_faces.write(tmp / "faces", train=0, test=args.images, size=args.size)
        paths = sorted((tmp / "faces" / "test" / "images").iterdir())

        def loop(chosen: list[Path], out: Path) -> float:
            out.mkdir()
            started = time.perf_counter()
            predict.run_model(model, chosen, info, out, device=device, tta=args.tta == "flip",
                              batch_size=args.batch_size, palette=False, decoder="pil")
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started

        before = load_average()
        loop(paths[:min(args.batch_size, len(paths))], tmp / "warmup")
        seconds = [loop(paths, tmp / f"round{r}") for r in range(args.rounds)]
        after = load_average()
        masks = len(list((tmp / "round0").glob("*.png")))
    median = statistics.median(seconds)
    print(f"model        {cfg.model._target_} ({predict.count_parameters(model):,} parameters), "
          f"{len(info['classes'])} classes, {args.size}x{args.size} images, batch {args.batch_size}, "
          f"TTA {args.tta or 'off'}")
    print(f"device       {device}" + (f", {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
                                      if device.type == "cpu" else f", {torch.cuda.get_device_name()}"))
    print(f"throughput   {args.images / median:.2f} images/s ({median / args.images * 1000:.0f} ms per image; "
          f"{masks} masks per round; rounds {', '.join(f'{s:.2f} s' for s in seconds)})")
    print(f"load before  {before}")
    print(f"load after   {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
