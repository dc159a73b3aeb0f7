"""Unit tests of lesson 01's autoencoder (dalle_mini_impl/autoencoder.py)."""
import pytest
import torch

from dalle_mini_impl.autoencoder import (Autoencoder, AutoencoderConfig, conv_decoder, conv_encoder,
                                         evaluate, fit, interpolate)


@pytest.mark.parametrize("n_down", [0, 1, 2, 3])
def test_conv_encoder_decoder_shapes(n_down):
    x = torch.rand(3, 2, 16, 16)
    h = conv_encoder(2, 8, n_down, out_ch=5)(x)
    assert h.shape == (3, 5, 16 // 2 ** n_down, 16 // 2 ** n_down)
    y = conv_decoder(5, 8, n_down, out_ch=2, n_res=1)(h)
    assert y.shape == x.shape


@pytest.mark.parametrize("latent_dim", [2, 16, None])
def test_autoencoder_shapes(latent_dim):
    cfg = AutoencoderConfig(in_channels=3, image_size=16, hidden=8, n_down=2, latent_dim=latent_dim,
                            latent_channels=4)
    m = Autoencoder(cfg)
    x = torch.rand(5, 3, 16, 16)
    z = m.encode(x)
    assert z.shape == ((5, latent_dim) if latent_dim else (5, 4, 4, 4))
    assert z[0].numel() == cfg.bottleneck_size
    y = m(x).detach()
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert interpolate(m, x[0], x[1], steps=6).shape == (6, 3, 16, 16)
    assert m.loss(x).dim() == 0


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(image_size=12, n_down=3)
    m = Autoencoder(AutoencoderConfig(image_size=16))
    with pytest.raises(ValueError, match="expected images of shape"):
        m.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        interpolate(m, torch.rand(1, 16, 16), torch.rand(1, 16, 16), steps=1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fit(m, torch.rand(16, 16), steps=1)


def test_a_few_training_steps_lower_the_loss_and_are_deterministic():
    x = torch.rand(64, 1, 16, 16).round()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Autoencoder(AutoencoderConfig(hidden=8, latent_dim=8))
        before = evaluate(m, x)["loss"]
        hist = fit(m, x, steps=30, batch_size=32, lr=3e-3, generator=torch.Generator().manual_seed(1))
        runs.append(hist["loss"])
        assert evaluate(m, x)["loss"] < before
    assert runs[0] == runs[1]
