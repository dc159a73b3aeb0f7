"""Tests of the small CLIP (lesson 09): the contrastive loss, scoring, reranking, zero-shot."""
import json
import math

import pytest
import torch

from dalle_mini_impl.clip import (CLIP, CLIPConfig, contrastive_loss, load_clip, save_clip, shapes_prompts,
                                  train_clip, zero_shot_classify)
from dalle_mini_impl.training.__main__ import main


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLIP(CLIPConfig(width=8, d_text=32, embed_dim=16, text_layers=1)).eval()


def test_contrastive_loss_hand_computed_3x3():
    # images e1, e2, e3; captions e1, e2, (e1 + e2)/sqrt 2; temperature 1 (logit_scale 0):
    # logits L[i, j] = <image_i, caption_j> = [[1, 0, r], [0, 1, r], [0, 0, 0]], r = 1/sqrt 2.
    # image->text CE rows: -log(e/(e + 1 + e^r)) twice and -log(1/3); text->image CE per
    # column: -log(e/(e + 2)) twice and -log(1/(2 e^r + 1)); loss = mean of both means.
    r, e = 1 / math.sqrt(2), math.e
    i2t = (2 * -math.log(e / (e + 1 + math.exp(r))) + math.log(3)) / 3
    t2i = (2 * -math.log(e / (e + 2)) + math.log(2 * math.exp(r) + 1)) / 3
    want = (i2t + t2i) / 2
    assert want == pytest.approx(0.8865448148204002, abs=1e-12)  # the number by hand, once
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])  # unnormalised on purpose
    got = contrastive_loss(img, txt, torch.tensor(0.0))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the temperature multiplies the logits: scale 2 (logit_scale log 2) changes the value
    assert contrastive_loss(img, txt, math.log(2.0)).item() != pytest.approx(want, rel=1e-3)


def test_contrastive_loss_is_symmetric_and_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(contrastive_loss(a, b, 1.0), contrastive_loss(b, a, 1.0))
    with pytest.raises(ValueError, match="must both be"):
        contrastive_loss(a, b[:4], 1.0)


def test_forward_shapes_and_unit_embeddings(model):
    x = torch.rand(4, 3, 32, 32)
    caps = ["a small red circle on the left", "a large blue square at the top", "", "a picture of a small green diamond in the centre"]
    assert model.encode_image(x).shape == (4, 16)
    t = model.encode_text(caps)
    assert t.shape == (4, 16) and torch.isfinite(t).all()
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(4))
    assert model(x, caps).shape == (4, 4)
    assert model.score(x, caps).shape == (4,)
    with pytest.raises(ValueError, match="one caption per image"):
        model.score(x, caps[:3])
    with pytest.raises(ValueError, match="32x32"):
        model.encode_image(torch.rand(2, 3, 16, 16))


def test_rerank_returns_top_scoring_images_in_order(model):
    g = torch.Generator().manual_seed(1)
    caps = ["a small red circle on the left", "a large blue square at the top"]
    images = torch.rand(2, 6, 3, 32, 32, generator=g)  # (B, N, C, S, S)
    best, scores, order = model.rerank(caps, images, top=3)
    assert best.shape == (2, 3, 3, 32, 32) and scores.shape == order.shape == (2, 3)
    for b in range(2):
        full = model.score(images[b], [caps[b]] * 6)  # (N,)
        want = full.argsort(descending=True)[:3]
        assert order[b].tolist() == want.tolist()
        torch.testing.assert_close(scores[b], full[want])
        torch.testing.assert_close(best[b], images[b, want])
        assert (scores[b][:-1] >= scores[b][1:]).all()  # best first
    # one caption string with (N, C, S, S) candidates
    one, s1, o1 = model.rerank(caps[0], images[0], top=1)
    assert one.shape == (1, 3, 32, 32) and o1.item() == order[0, 0].item()
    with pytest.raises(ValueError, match="top must lie"):
        model.rerank(caps, images, top=7)
    with pytest.raises(ValueError, match="captions for"):
        model.rerank(caps[:1], images, top=1)


def test_zero_shot_prompts_and_classify(model):
    p = shapes_prompts("colour")
    assert sorted(p) == sorted(["red", "green", "blue", "yellow", "purple", "cyan"])
    assert all("red" in c for c in p["red"]) and len(p["red"]) == 4 * 2 * 5
    preds = zero_shot_classify(model, torch.rand(3, 3, 32, 32), p)
    assert len(preds) == 3 and all(x in p for x in preds)
    with pytest.raises(ValueError, match="attribute"):
        shapes_prompts("texture")


def test_save_load_round_trip(model, tmp_path):
    path = save_clip(model, tmp_path / "clip.pt")
    again = load_clip(path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again.encode_image(x), model.encode_image(x))
    torch.testing.assert_close(again.encode_text(["a small red circle on the left"]),
                               model.encode_text(["a small red circle on the left"]))


def test_short_training_lowers_the_loss():
    losses = []
    train_clip(steps=30, n_train=512, batch_size=64, lr=3e-3, config=CLIPConfig(width=8, d_text=32, embed_dim=16,
               text_layers=1), log=lambda r: losses.append(r["loss"]), log_every=1, n_objects=(1,))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses


def test_training_command_writes_checkpoint_and_metrics(tmp_path):
    out = tmp_path / "clip"
    main(["clip", "--steps", "3", "--n-train", "256", "--batch-size", "32", "--n-eval", "128",
          "--width", "8", "--d-text", "32", "--embed-dim", "16", "--text-layers", "1", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["zero_shot_colour_train"] <= 1
    model = load_clip(out)
    assert model.config.width == 8 and model.score(torch.rand(1, 3, 32, 32), ["a small red circle on the left"]).shape == (1,)
    with pytest.raises(SystemExit):
        main(["clip", "--steps", "3", "--out", str(out), "--split", "nope"])


def test_training_command_resumes_exactly(tmp_path):
    """``clip --stop-after 2`` then ``--resume`` ends with the uninterrupted run's weights;
    a different seed is refused."""
    tiny = ["clip", "--steps", "4", "--n-train", "256", "--batch-size", "32", "--n-eval", "64", "--width", "8",
            "--d-text", "32", "--embed-dim", "16", "--text-layers", "1", "--log-every", "1", "--ckpt-every", "1"]
    main(tiny + ["--out", str(tmp_path / "full")])
    main(tiny + ["--out", str(tmp_path / "part"), "--stop-after", "2"])
    assert torch.load(tmp_path / "part" / "resume.pt", weights_only=True)["step"] == 2
    with pytest.raises(ValueError, match="--seed"):
        main(tiny + ["--out", str(tmp_path / "part"), "--resume", "--seed", "3"])
    main(tiny + ["--out", str(tmp_path / "part"), "--resume"])
    a = torch.load(tmp_path / "full" / "clip.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "clip.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "part")]
    assert logs[0] == logs[1] and len(logs[0]) == 4


def test_zero_shot_accepts_precomputed_embeddings(model):
    x = torch.rand(5, 3, 32, 32)
    p = shapes_prompts("shape")
    assert zero_shot_classify(model, x, p) == zero_shot_classify(model, model.encode_image(x), p)
