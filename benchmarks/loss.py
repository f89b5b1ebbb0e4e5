"""The segmentation loss against a straightforward cross-entropy + Dice, forward and backward on the same logits.

    python benchmarks/loss.py [--rounds 7] [--batch 8] [--classes 19] [--size 256] [--threads 2]

"Straightforward" is how a user's script usually writes it (and how this project did before): F.cross_entropy,
then a soft Dice over softmax probabilities and a float one-hot of the targets. Ours (project.losses.CEDiceLoss,
dice_weight 1) computes the same value (tests/test_losses.py) from one log-softmax, with the Dice sums gathered
per class instead of a one-hot. The two run alternately, `--rounds` times after a warm-up; printed: each one's
median ms and the median of the rounds' ratios (ours / straightforward). Target: <= 1.05.
"""
import argparse
import statistics
import time


def straightforward(logits, target, smooth: float = 1.0):
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return ce + (1 - ((2 * inter + smooth) / (denom + smooth)).mean())


def timed(loss_fn, logits, target) -> float:
    x = logits.clone().requires_grad_()
    start = time.perf_counter()
    loss_fn(x, target).backward()
    return (time.perf_counter() - start) * 1000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from project.losses import CEDiceLoss

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.classes, args.size, args.size, generator=g)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=g)
    ours = CEDiceLoss()
    timed(ours, logits, target), timed(straightforward, logits, target)  # warm-up: allocator, thread pool
    rounds = [(timed(ours, logits, target), timed(straightforward, logits, target)) for _ in range(args.rounds)]
    mine, theirs = zip(*rounds)
    print(f"logits {args.batch}x{args.classes}x{args.size}x{args.size}, {args.threads} threads, {args.rounds} rounds, "
          "forward + backward")
    print(f"CEDiceLoss          median {statistics.median(mine):7.1f} ms")
    print(f"straightforward     median {statistics.median(theirs):7.1f} ms")
    print(f"ours / straightforward: {statistics.median(a / b for a, b in rounds):.3f} (median of the rounds' ratios)")


if __name__ == "__main__":
    main()
