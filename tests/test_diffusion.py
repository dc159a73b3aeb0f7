"""diffusion.py: the forward process, the loss, DDPM and DDIM, guidance, inpainting, the U-Net."""
import math

import pytest
import torch

from dalle_mini_impl.diffusion import (GaussianDiffusion, TextUNet, UNetConfig, classifier_free,
                                       gradient_guided)


def gaussian_eps(diffusion: GaussianDiffusion, m: float, s: float):
    """The exact noise prediction E[eps | x_t] when x_0 ~ N(m, s^2) elementwise."""
    def eps_fn(x, t):
        a = diffusion.abar(t, x)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s ** 2 + 1 - a)
    return eps_fn


def test_closed_form_matches_iterating_the_forward_process():
    d = GaussianDiffusion(T=40)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000, 1), 0.7)
    x = x0.clone()
    for t in range(1, 26):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z
        beta = d.betas64[t - 1].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=g)
    closed = d.q_sample(x0, torch.full((20_000,), 25), torch.randn(x0.shape, generator=g))
    a = d.abar64[25].item()
    for sample in (x, closed):
        assert abs(sample.mean().item() - math.sqrt(a) * 0.7) < 0.02
        assert abs(sample.std().item() - math.sqrt(1 - a)) < 0.02


def test_loss_at_the_true_noise_is_zero_and_positive_elsewhere():
    d = GaussianDiffusion(T=100)
    x0 = torch.rand(8, 3, 4, 4) * 2 - 1

    def oracle(x_t, t):  # knows x_0, so it recovers the noise exactly
        a = d.abar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    assert d.loss(oracle, x0, generator=torch.Generator().manual_seed(1)).item() < 1e-10
    assert d.loss(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(1)).item() > 0.5


def test_ddim_with_eta_one_and_every_step_is_ddpm():
    d = GaussianDiffusion(T=50)
    eps = gaussian_eps(d, 0.3, 0.5)
    ddpm = d.ddpm_sample(eps, (4000, 1), generator=torch.Generator().manual_seed(2), clip_x0=False)
    ddim = d.sample(eps, (4000, 1), steps=None, eta=1.0, generator=torch.Generator().manual_seed(2), clip_x0=False)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)  # the same draws: the same update


def test_the_samplers_draw_the_data_distribution():
    """x_0 ~ N(0.3, 0.5^2) with the exact noise prediction: DDPM over 500 steps and DDIM (eta 0)
    in 100 of 1,000 steps both end near it (each sampler's discretisation error shrinks with
    the number of steps: DDIM's std is 0.42 at 10 steps, 0.483 at 50, 0.495 at 200)."""
    ddpm_d, ddim_d = GaussianDiffusion(T=500), GaussianDiffusion(T=1000)
    ddpm = ddpm_d.ddpm_sample(gaussian_eps(ddpm_d, 0.3, 0.5), (4000, 1), generator=torch.Generator().manual_seed(2),
                              clip_x0=False)
    ddim = ddim_d.sample(gaussian_eps(ddim_d, 0.3, 0.5), (4000, 1), steps=100, eta=0.0,
                         generator=torch.Generator().manual_seed(3), clip_x0=False)
    for x in (ddpm, ddim):
        assert abs(x.mean().item() - 0.3) < 0.03 and abs(x.std().item() - 0.5) < 0.02, (x.mean(), x.std())


def test_timesteps_and_bad_steps():
    d = GaussianDiffusion(T=1000)
    ts = d.timesteps(50)
    assert ts[0] == 1000 and ts[-1] == 1 and len(ts) == 50 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError, match="steps must lie"):
        d.timesteps(0)


def tiny_unet(embed_dim: int = 0) -> TextUNet:
    torch.manual_seed(0)
    return TextUNet(UNetConfig(image_size=8, base=16, mults=(1, 2), attn_levels=(1,), heads=2, text_len=5,
                               n_text_tokens=20, d_text=16, text_layers=1, embed_dim=embed_dim))


def test_unet_shapes_and_conditioning():
    net = tiny_unet()
    for p in net.parameters():  # move off the zero initialisation so the output depends on the caption
        p.data += 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 500, 1000])
    a, b = torch.tensor([[1, 2, 3, 15, 16]] * 3), torch.tensor([[4, 5, 6, 15, 16]] * 3)
    out = net(x, t, a)
    assert out.shape == x.shape
    assert (out - net(x, t, b)).abs().max() > 1e-4, "the caption changes the prediction"
    with pytest.raises(ValueError, match="embed"):
        tiny_unet(embed_dim=4)(x, t, a)
    assert tiny_unet(embed_dim=4)(x, t, a, embed=torch.randn(3, 4)).shape == x.shape


def test_classifier_free_guidance_at_one_is_unguided_sampling():
    net, d = tiny_unet().eval(), GaussianDiffusion(T=100)
    ids, null = torch.tensor([[1, 2, 3, 15, 16]] * 2), torch.tensor([[15, 16, 17, 18, 19]] * 2)
    plain = d.sample(lambda x, t: net(x, t, ids), (2, 3, 8, 8), steps=5, eta=1.0,
                     generator=torch.Generator().manual_seed(4))
    guided = d.sample(classifier_free(net, ids, null, 1.0), (2, 3, 8, 8), steps=5, eta=1.0,
                      generator=torch.Generator().manual_seed(4))
    assert torch.equal(plain, guided)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 90])
    e3 = classifier_free(net, ids, null, 3.0)(x, t)
    cond, uncond = net(x, t, ids), net(x, t, null)
    torch.testing.assert_close(e3, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_gradient_guidance_moves_samples_up_the_score():
    d = GaussianDiffusion(T=100)
    eps = gaussian_eps(d, 0.0, 0.5)
    target = torch.full((1, 1), 0.8)

    def score(x, t):  # higher when the (noisy) sample is near the target
        return -((x - target) ** 2).sum(1)
    base = d.sample(eps, (2000, 1), steps=20, generator=torch.Generator().manual_seed(5), clip_x0=False)
    pulled = d.sample(gradient_guided(eps, d, score, 2.0), (2000, 1), steps=20,
                      generator=torch.Generator().manual_seed(5), clip_x0=False)
    assert pulled.mean().item() > base.mean().item() + 0.2
    same = d.sample(gradient_guided(eps, d, score, 0.0), (2000, 1), steps=20,
                    generator=torch.Generator().manual_seed(5), clip_x0=False)
    assert torch.equal(same, base)


def test_inpainting_keeps_the_known_pixels():
    net, d = tiny_unet().eval(), GaussianDiffusion(T=100)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:6, 2:6] = 0  # erase the middle
    ids = torch.tensor([[1, 2, 3, 15, 16]] * 2)
    out = d.sample(lambda x, t: net(x, t, ids), (2, 3, 8, 8), steps=8, eta=1.0, known=known, keep=keep,
                   generator=torch.Generator().manual_seed(6))
    assert torch.equal(out * keep, known * keep)
    assert (out - known)[..., 2:6, 2:6].abs().max() > 0.05, "the erased region is drawn anew"
    with pytest.raises(ValueError, match="keep"):
        d.sample(lambda x, t: net(x, t, ids), (2, 3, 8, 8), steps=2, known=known)


def test_a_few_steps_of_training_lower_the_loss():
    net, d = tiny_unet(), GaussianDiffusion(T=100)
    g = torch.Generator().manual_seed(7)
    x0 = torch.zeros(16, 3, 8, 8)
    x0[:8, 0, :4] = 1.0  # two "captions": red top half, or blue bottom half
    x0[8:, 2, 4:] = 1.0
    x0 = x0 * 2 - 1
    ids = torch.tensor([[1, 2, 15, 16, 17]] * 8 + [[3, 4, 15, 16, 17]] * 8)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = d.loss(net, x0, ids, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10  # measured 0.25 vs 0.86 on 3 seeds
