"""Tests of dalle_mini_impl.elb: KL to the uniform prior, schedules, codebook health."""
import math

import pytest
import torch

from dalle_mini_impl import elb, vae


def test_kl_to_uniform_is_nonnegative_and_log_k_minus_entropy():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4, 16, 3, 3, generator=g)  # (B, K, h, w)
    kl = elb.kl_to_uniform(logits)
    assert kl.shape == (4, 3, 3)
    assert (kl >= 0).all()
    torch.testing.assert_close(kl, math.log(16) - elb.entropy(logits), atol=1e-5, rtol=0)
    # uniform q has zero KL; a one-hot q has KL = log K
    assert elb.kl_to_uniform(torch.zeros(1, 16, 1, 1)).abs().max() < 1e-6
    onehot = torch.full((1, 16, 1, 1), -1e4)
    onehot[:, 3] = 0
    assert abs(elb.kl_to_uniform(onehot).item() - math.log(16)) < 1e-4


def test_elb_stage1_combines_terms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 8, 2, 2, generator=g)
    nll = torch.tensor([10.0, 20.0])
    t = elb.elb_stage1(nll, logits, beta=2.0, n_dims=12)
    kl = elb.kl_to_uniform(logits).flatten(1).sum(1).mean()
    torch.testing.assert_close(t.kl, kl)
    torch.testing.assert_close(t.loss, (15.0 + 2.0 * kl) / 12)
    torch.testing.assert_close(t.elb, -(15.0 + kl))
    with pytest.raises(ValueError):
        elb.elb_stage1(nll, logits[0], beta=1.0, n_dims=12)


def test_usage_kl_measures_aggregate_code_usage():
    k = 8
    # every code the argmax of one cell, equally often: aggregate usage uniform -> 0
    logits = torch.full((2, k, 2, 2), -10.0)
    for i in range(k):
        logits[i // 4, i, (i % 4) // 2, i % 2] = 10.0
    assert elb.usage_kl(logits).item() < 1e-4
    # every cell confident on code 3: ln K, even though each cell's own KL is maximal too
    same = torch.full((2, k, 2, 2), -10.0)
    same[:, 3] = 10.0
    assert abs(elb.usage_kl(same).item() - math.log(k)) < 1e-4
    # broad q everywhere is uniform on aggregate only at sharpness 1; sharpened, the argmax shows
    g = torch.Generator().manual_seed(4)
    broad = 0.3 * torch.randn(1, k, 4, 4, generator=g)
    broad[:, 0] += 0.5  # code 0 wins most cells by a little
    assert elb.usage_kl(broad, sharpness=1.0).item() < 0.1 < elb.usage_kl(broad, sharpness=0.05).item()
    with pytest.raises(ValueError):
        elb.usage_kl(logits, sharpness=0.0)


def test_elb_stage1_usage_term_is_added_only_when_weighted():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 8, 2, 2, generator=g)
    nll = torch.tensor([10.0, 20.0])
    plain = elb.elb_stage1(nll, logits, beta=1.0, n_dims=12)
    used = elb.elb_stage1(nll, logits, beta=1.0, n_dims=12, usage_weight=0.5, usage_sharpness=0.2)
    assert plain.usage is None
    torch.testing.assert_close(used.usage, elb.usage_kl(logits, 0.2))
    torch.testing.assert_close(used.loss, plain.loss + 0.5 * used.usage)
    torch.testing.assert_close(used.elb, plain.elb)  # the bound itself does not change


def test_stage2_nll_is_cross_entropy_sum():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (3, 5), generator=g)
    expected = -torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0].sum(1)
    torch.testing.assert_close(elb.stage2_nll(logits, tokens), expected)


@pytest.mark.parametrize("kind", ["cosine", "linear", "exp"])
def test_schedules_hit_end_points(kind):
    s = elb.Schedule(1.0, 1 / 16, 100, kind)
    assert s(0) == pytest.approx(1.0)
    assert s(100) == pytest.approx(1 / 16)
    assert s(10_000) == pytest.approx(1 / 16)
    values = [s(i) for i in range(101)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))  # monotone


def test_paper_schedules():
    beta, tau = elb.beta_schedule(), elb.tau_schedule()
    assert beta(0) == 0.0 and beta(5000) == pytest.approx(6.6) and beta(2500) == pytest.approx(3.3)
    assert tau(0) == 1.0 and tau(150_000) == pytest.approx(1 / 16)
    with pytest.raises(ValueError):
        elb.Schedule(1, 2, 10, kind="step")


def test_codebook_health():
    ids = torch.tensor([[0, 0, 1], [1, 2, 2]])
    counts = elb.codebook_usage(ids, n_codes=5)
    assert counts.tolist() == [2, 2, 2, 0, 0]
    assert elb.perplexity(counts) == pytest.approx(3.0)
    assert elb.dead_codes(counts) == 2
    assert elb.perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        elb.codebook_usage(torch.tensor([5]), n_codes=5)


def test_bits_per_dim_is_the_vae_one():
    # one definition (vae.py, tested in test_vae.py); lesson 04 calls it as elb.bits_per_dim
    assert elb.bits_per_dim is vae.bits_per_dim
    assert elb.bits_per_dim(0.0, 10, pixel_levels=256) == pytest.approx(8.0)
