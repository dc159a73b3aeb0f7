"""Unit tests of lesson 02's Gaussian VAE (dalle_mini_impl/vae.py)."""
import math

import pytest
import torch

from dalle_mini_impl.vae import (VAE, VAEConfig, bits_per_dim, discretized_gaussian_log_likelihood, evaluate,
                                 fit, gaussian_kl, gaussian_kl_monte_carlo, interpolate, reparameterize)


def test_shapes_of_every_output():
    cfg = VAEConfig(in_channels=3, image_size=16, hidden=8, n_down=2, latent_dim=6)
    m = VAE(cfg)
    x = torch.rand(4, 3, 16, 16)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (4, 6)
    z = reparameterize(mu, logvar)
    assert z.shape == (4, 6)
    mean, log_scale = m.decode_params(z)
    assert mean.shape == log_scale.shape == x.shape
    assert m(x).shape == x.shape and m.sample(7).shape == (7, 3, 16, 16)
    assert interpolate(m, x[0], x[1], steps=5).shape == (5, 3, 16, 16)
    out = m.loss(x)
    assert all(v.dim() == 0 for v in out)
    torch.testing.assert_close(out.nelbo, out.recon + out.kl)
    assert gaussian_kl(mu, logvar).shape == (4,)
    assert discretized_gaussian_log_likelihood(x, mean, log_scale).shape == (4,)


def test_analytic_kl_matches_monte_carlo_within_3_standard_errors():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(6, 5, generator=g, dtype=torch.float64)
    est, se = gaussian_kl_monte_carlo(mu, logvar, n_samples=20_000, generator=g)
    kl = gaussian_kl(mu, logvar)
    assert torch.all((kl - est).abs() < 3 * se), (kl, est, se)


def test_kl_is_zero_exactly_when_posterior_equals_prior():
    zero = torch.zeros(3, 4)
    assert torch.equal(gaussian_kl(zero, zero), torch.zeros(3))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mu = torch.randn(3, 4, generator=g) * 0.1
        lv = torch.randn(3, 4, generator=g) * 0.1
        assert torch.all(gaussian_kl(mu, zero) > 0) and torch.all(gaussian_kl(zero, lv) > 0)


def test_bits_per_dim_on_hand_computed_cases():
    # raw bytes: 256 equally likely levels cost exactly 8 bits per dim
    assert bits_per_dim(100 * math.log(256), 100) == pytest.approx(8.0)
    # mean on the pixel and scale = half a bin: the bin is +-1 sigma, mass erf(1/sqrt 2) = 0.682689...
    # -> -log2(0.682689) = 0.550755 bits; at the lowest level (x = 0) the mass is Phi(1) = 0.841345
    x = torch.tensor([[[[128 / 255, 0.0]]]])
    log_scale = torch.full_like(x, math.log(0.5 / 255))
    nats = -discretized_gaussian_log_likelihood(x, x.clone(), log_scale)
    expected = -math.log2(0.6826894921370859) - math.log2(0.8413447460685429)
    assert float(bits_per_dim(nats, 1)) == pytest.approx(expected, rel=1e-4)  # float32 CDFs
    # the masses of all 256 levels sum to one (a proper distribution)
    levels = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 1, 256)
    mean, ls = torch.full_like(levels, 0.3), torch.full_like(levels, math.log(0.2))
    per_level = torch.stack([discretized_gaussian_log_likelihood(levels[..., i:i + 1], mean[..., :1], ls[..., :1])
                             for i in range(256)])
    assert float(per_level.exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_bits_per_dim_of_a_density_over_pixels():
    # a density over [0, 1] bounds the NLL of 256-level pixels after log2(256) = 8 bits per dim
    assert bits_per_dim(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert bits_per_dim(0.0, 10, pixel_levels=256) == pytest.approx(8.0)
    # a pixel map of Jacobian `scale` applied first costs -log2(scale) bits per dim
    assert bits_per_dim(0.0, 10, scale=0.5) == pytest.approx(1.0)
    # floats in, float out; tensors in, tensors out (element-wise)
    assert isinstance(bits_per_dim(3.0, 2, pixel_levels=256, scale=0.8), float)
    t = bits_per_dim(torch.tensor([0.0, 10 * math.log(2)]), 10, pixel_levels=256, scale=0.8)
    torch.testing.assert_close(t, torch.tensor([8.0, 9.0]) - math.log2(0.8))
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="scale"):
        bits_per_dim(1.0, 1, scale=0.0)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(image_size=20, n_down=3)
    with pytest.raises(ValueError, match="beta"):
        VAEConfig(beta=-1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        discretized_gaussian_log_likelihood(torch.full((1, 1, 2, 2), 2.0), torch.zeros(1, 1, 2, 2),
                                            torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16).pow(3)
    m = VAE(VAEConfig(hidden=8, latent_dim=4, n_levels=17))
    torch.manual_seed(1)
    before = evaluate(m, x)["nelbo"]
    hist = fit(m, x, steps=30, batch_size=32, lr=3e-3)
    torch.manual_seed(1)
    after = evaluate(m, x)["nelbo"]
    assert after < before and set(hist) == {"loss", "nelbo", "recon", "kl", "bits_per_dim"}
