"""The two F-scores against direct numpy implementations of their definitions."""
import numpy as np
import torch

from project.metrics import ConfusionMatrix, ImageF1, image_f1


def benchmark_score(pred: np.ndarray, gt: np.ndarray, ignore: int = 255) -> float:
    """The course benchmark, written as its definition reads: per image, the classes in np.unique(gt), F1 with
    eps 1e-7 in P, R and F, the image's mean; then the mean over images."""
    scores = []
    for p, g in zip(pred, gt):
        valid = g != ignore
        p, g = p[valid], g[valid]
        f1s = []
        for c in np.unique(g):
            tp = np.sum((p == c) & (g == c))
            precision = tp / (np.sum(p == c) + 1e-7)
            recall = tp / (np.sum(g == c) + 1e-7)
            f1s.append(2 * precision * recall / (precision + recall + 1e-7))
        scores.append(np.mean(f1s))
    return float(np.mean(scores))


def test_image_f1_matches_the_benchmark_definition():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (6, 12, 12))
    gt[0] = 0  # an image of background only
    gt[1, :4] = 255  # ignored pixels
    gt[2][gt[2] == 3] = 1  # a class absent from the truth but predicted: ignored by the score
    pred = np.where(rng.random(gt.shape) < 0.7, np.where(gt == 255, 0, gt), rng.integers(0, 5, gt.shape))
    want = benchmark_score(pred, gt)
    per_image = image_f1(torch.from_numpy(pred), torch.from_numpy(gt), 5)
    assert abs(per_image.mean().item() - want) < 1e-12
    meter = ImageF1(5, "cpu")
    for i in range(0, 6, 4):  # batches of 4 and 2: the mean is over images, not over batches
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred[i:i + 4]), 5).permute(0, 3, 1, 2).float()
        meter.update(logits, torch.from_numpy(gt[i:i + 4]))
    assert abs(meter.compute() - want) < 1e-12


def test_dataset_f1_per_class_matches_a_numpy_confusion_matrix():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 4, (3, 10, 10)), rng.integers(0, 4, (3, 10, 10))
    confusion = ConfusionMatrix(4, "cpu")
    confusion.update(torch.nn.functional.one_hot(torch.from_numpy(pred), 4).permute(0, 3, 1, 2).float(),
                     torch.from_numpy(gt))
    per_class = confusion.per_class()
    for c in range(4):
        tp, fp, fn = np.sum((pred == c) & (gt == c)), np.sum((pred == c) & (gt != c)), np.sum((pred != c) & (gt == c))
        assert abs(per_class["f1"][c] - 2 * tp / (2 * tp + fp + fn)) < 1e-12
        assert abs(per_class["iou"][c] - tp / (tp + fp + fn)) < 1e-12
    assert abs(confusion.compute()["f_score"] - np.mean(per_class["f1"][1:])) < 1e-12  # background excluded


def test_the_class_map_is_argmax_ties_and_nan_included():
    """class_map (max's indices, the fast path on the CPU) picks what argmax picks: the first of tied scores, a NaN
    as the largest, along any dimension and in the half-precision dtypes."""
    from project.metrics import class_map

    scores = torch.randint(0, 3, (4, 19, 16, 16)).float()  # many ties
    scores[0, 5, 3, 3] = scores[1, 2, 0, 0] = scores[1, 7, 0, 0] = float("nan")
    assert torch.equal(class_map(scores), scores.argmax(1))
    assert torch.equal(class_map(scores[0], dim=0), scores[0].argmax(0))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(class_map(scores.to(dtype)), scores.to(dtype).argmax(1))
