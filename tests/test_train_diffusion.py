"""`python -m dalle_mini_impl.training diffusion`: the run folder, resume, Ctrl-C, and the saved
system that `generate` reads."""
import json

import pytest
import torch

from dalle_mini_impl.__main__ import main as cli_main
from dalle_mini_impl.autoencoder import Autoencoder, AutoencoderConfig
from dalle_mini_impl.diffusion import DiffusionSystem
from dalle_mini_impl.training.__main__ import main

TINY = ["--latent-channels", "0", "--base", "8", "--mults", "1,2", "--d-text", "16", "--heads", "2", "--n-train", "48", "--batch-size", "4",
        "--T", "20", "--val-pairs", "8", "--sample-steps", "2", "--log-every", "1", "--ckpt-every", "2",
        "--precision", "fp32", "--device", "cpu", "--threads", "1"]


def test_diffusion_command_writes_a_system_that_generate_reads(tmp_path):
    out = tmp_path / "run"
    main(["diffusion", "--steps", "3", "--out", str(out), *TINY])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert {"loss", "val_loss", "lr", "grad_norm", "skipped", "images_per_s"} <= set(lines[0])
    assert (out / "samples" / "step_000003.png").is_file()
    model = DiffusionSystem.load(out)
    a = model.generate(["a small red circle on the left"], n=2, steps=3, guidance=2.0, seed=1)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.generate(["a small red circle on the left"], n=2, steps=3, guidance=2.0, seed=1))
    assert cli_main(["generate", "a small red circle on the left", "--model", str(out), "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(["diffusion", "--steps", "4", "--out", str(full), *TINY])
    main(["diffusion", "--steps", "4", "--stop-after", "2", "--out", str(part), *TINY])
    assert not (part / "unet.pt").exists() and (part / "resume.pt").exists()
    main(["diffusion", "--steps", "4", "--out", str(part), "--resume", *TINY])
    a = torch.load(full / "unet.pt", weights_only=True)["unet"]
    b = torch.load(part / "unet.pt", weights_only=True)["unet"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="--base"):
        main(["diffusion", "--steps", "4", "--out", str(part), "--resume", *TINY, "--base", "16"])


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(tmp_path, monkeypatch, sigint_after):
    from dalle_mini_impl.training import diffusion as training_diffusion
    full, part = tmp_path / "full", tmp_path / "part"
    main(["diffusion", "--steps", "5", "--out", str(full), *TINY])
    real = training_diffusion.drop_captions  # called once per step, before its update
    monkeypatch.setattr(training_diffusion, "drop_captions", sigint_after(real, 3))
    with pytest.raises(SystemExit) as exc:
        main(["diffusion", "--steps", "5", "--out", str(part), *TINY])
    assert exc.value.code == 130
    assert torch.load(part / "resume.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(training_diffusion, "drop_captions", real)
    main(["diffusion", "--steps", "5", "--out", str(part), "--resume", *TINY])
    a = torch.load(full / "unet.pt", weights_only=True)["unet"]
    b = torch.load(part / "unet.pt", weights_only=True)["unet"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diffusion_directory_is_checked_on_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusion system"):
        DiffusionSystem.load(tmp_path)


def test_latent_diffusion_trains_saves_resumes_and_inpaints(tmp_path):
    """--latent-channels: lesson 01's autoencoder is fitted first, the U-Net runs on its 8x8
    latent, the system decodes to 32x32 pixels; resume reuses the saved autoencoder and equals
    an uninterrupted run; inpainting keeps the known pixels exactly."""
    latent = ["--latent-channels", "4", "--ae-steps", "3", "--ae-hidden", "8", "--attn-levels", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    main(["diffusion", "--steps", "4", "--out", str(full), *TINY, *latent])
    main(["diffusion", "--steps", "4", "--stop-after", "2", "--out", str(part), *TINY, *latent])
    main(["diffusion", "--steps", "4", "--out", str(part), "--resume", *TINY, *latent])
    a = torch.load(full / "unet.pt", weights_only=True)
    b = torch.load(part / "unet.pt", weights_only=True)
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    assert all(torch.equal(a["autoencoder"][k], b["autoencoder"][k]) for k in a["autoencoder"])
    model = DiffusionSystem.load(full)
    assert model.config.image_size == 8 and model.config.channels == 4 and model.image_shape == (3, 32, 32)
    low, high = model.latent_range  # each channel's training range: what sampling clamps x0_hat to
    assert len(low) == len(high) == 4 and all(l < h for l, h in zip(low, high))
    x = model.generate(["a small red circle on the left"], n=2, steps=3, seed=0)
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    known = torch.rand(2, 3, 32, 32)
    keep = torch.ones(1, 1, 32, 32)
    keep[..., 8:24, 8:24] = 0
    y = model.generate(["a large blue square in the centre"], n=2, steps=3, seed=0, known=known, keep=keep)
    assert torch.equal(y * keep, known * keep)
    flat = Autoencoder(AutoencoderConfig(in_channels=3, image_size=32, latent_dim=16))  # a vector, not a grid
    with pytest.raises(ValueError, match="spatial latent"):
        DiffusionSystem(model.tokenizer, model.config, autoencoder=flat)
