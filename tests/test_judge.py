"""The shipped shapes judge reads attributes back from real held-out images."""
import torch

from dalle_mini_impl.datasets import ShapesDataset
from dalle_mini_impl.judge import (attribute_accuracy, caption_accuracy, load_judge,
                                   targets_from_labels)


def test_shipped_judge_reads_held_out_images():
    judge = load_judge()
    one = ShapesDataset(1000, seed=55_501, split="all", n_objects=1)
    two = ShapesDataset(500, seed=55_502, split="all", n_objects=2)
    acc1, acc2 = attribute_accuracy(judge, one), attribute_accuracy(judge, two)
    assert acc1["overall"] >= 0.99 and acc2["overall"] >= 0.99, (acc1, acc2)
    assert min(acc1.values()) >= 0.98 and min(acc2.values()) >= 0.98
    # held-out colour-shape pairs are read as well as the rest
    held = ShapesDataset(500, seed=55_503, split="holdout", n_objects=1)
    assert caption_accuracy(judge, held.float_images(), held.captions) >= 0.99


def test_caption_accuracy_rejects_wrong_captions():
    judge = load_judge()
    data = ShapesDataset(200, seed=55_504, split="all", n_objects=1)
    shuffled = data.captions[1:] + data.captions[:1]  # every image gets another's caption
    assert caption_accuracy(judge, data.float_images(), shuffled) < 0.2


def test_targets_put_the_left_or_upper_object_first():
    labels = torch.tensor([[[0, 1, 0, 1], [2, 3, 1, 0]]])  # first object drawn on the right
    t = targets_from_labels(labels, torch.tensor([1]))       # relation "right of"
    assert t["shape"].tolist() == [[2, 0]] and t["axis"].tolist() == [0] and t["count"].tolist() == [1]
    assert t["position"].tolist() == [[-100, -100]]
