"""Tests of dalle_mini_impl.dvae: logit-Laplace, pixel map, gumbel-softmax, the model's API,
training steps."""
import math

import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl import dvae
from dalle_mini_impl.dvae import DiscreteVAE, DVAEConfig, mse_nll


@pytest.mark.parametrize("mu,b", [(0.0, 1.0), (1.5, 0.3), (-2.0, 0.05), (0.5, 3.0)])
def test_logit_laplace_integrates_to_one(mu, b):
    from scipy import integrate

    def f(x):
        y = torch.tensor([x], dtype=torch.float64)
        return float(dvae.logit_laplace_log_prob(y, torch.tensor(mu, dtype=torch.float64),
                                                 torch.tensor(math.log(b), dtype=torch.float64)).exp())

    m = 1 / (1 + math.exp(-mu))  # the density's peak sits at sigmoid(mu): split the range there
    total = sum(integrate.quad(f, a, c, limit=400, epsabs=1e-10)[0] for a, c in [(0, m), (m, 1)])
    assert abs(total - 1.0) < 1e-3


def test_map_unmap_round_trip():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = dvae.map_pixels(x)
    assert y.min() >= 0.1 and y.max() <= 0.9
    torch.testing.assert_close(dvae.unmap_pixels(y), x)
    assert dvae.unmap_pixels(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]  # clamped


def test_gumbel_softmax_tends_to_one_hot():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 10, generator=g)
    for tau, min_max in [(1.0, 0.0), (0.1, 0.9), (0.01, 0.99)]:
        y = dvae.gumbel_softmax(logits, tau=tau, dim=1, generator=g)
        torch.testing.assert_close(y.sum(1), torch.ones(256))
        assert y.max(1).values.mean() >= min_max
    hard = dvae.gumbel_softmax(logits, tau=1.0, hard=True, dim=1, generator=g)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and (hard.sum(1) == 1).all()


def test_gumbel_softmax_argmax_distribution_matches_torch():
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).repeat(20_000, 1)
    ours = dvae.gumbel_softmax(logits, tau=0.5, generator=torch.Generator().manual_seed(1)).argmax(1)
    theirs = F.gumbel_softmax(logits, tau=0.5, dim=1).argmax(1)
    p = torch.softmax(logits[0], 0)
    f_ours = torch.bincount(ours, minlength=4) / 20_000.0
    f_theirs = torch.bincount(theirs, minlength=4) / 20_000.0
    assert (f_ours - p).abs().max() < 0.015 and (f_theirs - p).abs().max() < 0.015


def test_toy_model_api_and_errors():
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig.toy(n_hid=16, codebook_dim=16, n_codes=32)).eval()
    x = torch.rand(3, 3, 32, 32)
    ids = model.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.long
    img = model.decode(ids)
    assert img.shape == (3, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    out = model(x, tau=0.5)
    assert out["logits"].shape == (3, 32, 8, 8) and out["stats"].shape == (3, 6, 32, 32)
    # soft z and hard ids read the same codebook rows
    onehot = F.one_hot(ids, 32).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(model.decode_stats(onehot), model.decode_stats(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="token ids must lie"):
        model.decode(torch.full((1, 8, 8), 32))
    with pytest.raises(ValueError, match="expected images"):
        model.encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="float"):
        model.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="power of two"):
        DVAEConfig(image_size=32, grid=6)


def test_train_step_lowers_loss_and_save_load(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = DiscreteVAE(DVAEConfig.toy(n_hid=16, codebook_dim=16, n_codes=32))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x = torch.rand(8, 3, 32, 32, generator=g)
    first = dvae.train_step(model, opt, x, tau=1.0, beta=0.0, generator=g)["loss"]
    for _ in range(15):
        last = dvae.train_step(model, opt, x, tau=1.0, beta=0.0, generator=g)["loss"]
    assert last < first
    path = model.save(tmp_path / "m.pt")
    again = DiscreteVAE.load(path)
    assert again.config == model.config
    torch.testing.assert_close(again.encode(x), model.eval().encode(x))


def test_mse_baseline_reads_mu_directly_and_does_not_saturate():
    """The MSE baseline's mean is the decoder output itself: a pixel painted far too dark
    still gets a gradient (a sigmoid there saturated on the black shapes background)."""
    x = torch.ones(1, 3, 2, 2)
    stats = torch.full((1, 6, 2, 2), -10.0, requires_grad=True)
    mse_nll(x, stats, sigma=0.1).sum().backward()
    assert stats.grad[:, :3].abs().min() > 100  # (x - mu) / sigma^2 = 1100
    assert DVAEConfig.toy().likelihood == "mse" and DVAEConfig.paper().likelihood == "logit_laplace"
    model = DiscreteVAE(DVAEConfig.toy(n_hid=8, codebook_dim=8, n_codes=16))
    assert model.reconstruct(torch.full((1, 6, 2, 2), 1.7)).max() == 1.0  # clamped to [0, 1]


def test_usage_term_reaches_the_training_step():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = DiscreteVAE(DVAEConfig.toy(n_hid=8, codebook_dim=8, n_codes=16))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(4, 3, 32, 32, generator=g)
    rec = dvae.train_step(model, opt, x, tau=1.0, beta=1.0, generator=g, usage_weight=0.1)
    assert 0 <= rec["usage"] <= math.log(16) + 1e-6
    assert "usage" not in dvae.train_step(model, opt, x, tau=1.0, beta=1.0, generator=g)


def test_decoder_step_fits_hard_tokens_and_leaves_the_encoder():
    """dvae.decoder_step: the decoder learns to draw from argmax ids; the encoder gets no update."""
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig.toy(n_hid=16, codebook_dim=16, n_codes=32, likelihood="mse"))
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = model.eval().encode(x)
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = dvae.decoder_step(model, opt, ids, x)
    for _ in range(20):
        last = dvae.decoder_step(model, opt, ids, x)
    assert last["stage"] == "decoder" and last["mse"] < first["mse"] and last["loss"] < first["loss"]
    assert all(torch.equal(enc[k], v) for k, v in model.encoder.state_dict().items())
    assert torch.equal(model.eval().encode(x), ids)
