"""noisy_clip.py: the noise-aware CLIP of CLIP guidance (GLIDE 2.4), and the shipped one."""
import pytest
import torch

from dalle_mini_impl.clip import CLIP, CLIPConfig
from dalle_mini_impl.datasets import ShapesDataset
from dalle_mini_impl.diffusion import DiffusionSystem
from dalle_mini_impl.noisy_clip import NoisyCLIP, NoisyCLIPConfig, noise_report

SHIPPED = "data/diffusion_shapes_toy/noisy_clip.pt"


@pytest.fixture(scope="module")
def shipped():
    return NoisyCLIP.load(SHIPPED), DiffusionSystem.load("data/diffusion_shapes_toy")


def test_at_t_zero_the_noise_aware_clip_agrees_with_the_clean_clip(shipped):
    model, system = shipped
    data = ShapesDataset(200, image_size=32, seed=4242, split="train", n_objects=1)
    report = noise_report(model, system, data.float_images(), data.labels, timesteps=(0, 900))
    clean = report[0]
    assert clean["cos_to_clean"] > 0.85, clean
    assert clean["colour_agrees_with_clean"] >= 0.95 and clean["shape_agrees_with_clean"] >= 0.9, clean
    assert report[900]["shape_accuracy"] < clean["shape_accuracy"] - 0.3, "near pure noise it must read worse"


def test_only_the_new_encoder_learns_and_the_file_round_trips(tmp_path):
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(width=8, d_text=32, embed_dim=16, text_layers=1))
    model = NoisyCLIP(clip, NoisyCLIPConfig(channels=4, size=8, width=16, T=50))
    x0, txt, img = torch.randn(6, 4, 8, 8), torch.randn(6, 16), torch.randn(6, 16)
    model.loss(x0, torch.nn.functional.normalize(txt, dim=-1), torch.nn.functional.normalize(img, dim=-1)).backward()
    assert all(p.grad is None for p in model.clip.parameters()), "the clean CLIP stays frozen"
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("clip."))
    model.save(tmp_path / "n.pt")
    again = NoisyCLIP.load(tmp_path / "n.pt")
    t = torch.tensor([0, 3, 10, 20, 30, 50])
    torch.testing.assert_close(again.encode_image(x0, t), model.eval().encode_image(x0, t))
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="noise-aware CLIP"):
        NoisyCLIP.load(tmp_path / "bad.pt")


def test_clip_guidance_raises_the_guiding_clips_score(shipped):
    model, system = shipped
    caps = ["a large red triangle on the left", "a small blue circle at the top"] * 3
    text = model.encode_text(caps)
    x = {s: system.generate(caps, 1, steps=10, guidance=0.0, seed=3, clip_guide=model, clip_scale=s) for s in (0, 300)}
    scores = {s: model.clip.score(v, caps).mean().item() for s, v in x.items()}
    assert scores[300] > scores[0] + 0.2, scores
    assert text.shape == (6, model.clip.config.embed_dim)


def test_the_noisy_clip_command_writes_weights_and_a_noise_report(tmp_path):
    import json
    from dalle_mini_impl.training.__main__ import main
    out = tmp_path / "n.pt"
    main(["noisy-clip", "--steps", "2", "--n-train", "64", "--batch-size", "16", "--width", "16",
          "--threads", "1", "--out", str(out)])
    report = json.loads(out.with_suffix(".metrics.json").read_text())
    assert set(report["held_out"]) == {"0", "250", "500", "750", "900"}
    assert 0 <= report["held_out"]["0"]["shape_accuracy"] <= 1
    assert NoisyCLIP.load(out).config.width == 16
