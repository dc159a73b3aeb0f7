"""PowerSGD simulation: the paper's compression-rate formula, error feedback."""
import pytest
import torch

from dalle_mini_impl.powersgd import (PowerSGD, powersgd_compression_rate, resblock_shard_shapes,
                                      simulate_resblock_traffic)


@pytest.mark.parametrize("d_model,rank,m", [(512, 64, 8), (1024, 128, 8), (256, 32, 4), (768, 96, 8)])
def test_measured_traffic_matches_formula(d_model, rank, m):
    out = simulate_resblock_traffic(d_model, rank, m)
    assert out["elements_full"] == 12 * d_model**2 // m
    assert out["elements_sent"] == 6 * d_model * rank * (m + 2) // m**2
    assert out["rate"] == pytest.approx(out["formula_rate"], rel=1e-12)
    if m == 8:
        assert out["rate"] == pytest.approx(1 - 5 * rank / (8 * d_model), rel=1e-12)


def test_paper_scale_rate_is_about_85_percent():
    # the 12B model: d_model 3968; rank 896 gives the "about 85%" of section 2.5 / table 1
    assert powersgd_compression_rate(896, 3968) == pytest.approx(0.8589, abs=1e-4)
    with pytest.raises(ValueError):
        powersgd_compression_rate(0, 64)


def test_shard_shapes_and_bad_input():
    shapes = resblock_shard_shapes(64, 8)
    assert sum(a * b for a, b in shapes) == 12 * 64 * 64 // 8
    with pytest.raises(ValueError, match="divisible"):
        resblock_shard_shapes(60, 8)
    with pytest.raises(ValueError, match="rank"):
        PowerSGD((8, 4), rank=5)


def test_low_rank_gradient_is_recovered_and_error_feedback_catches_up():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(32, 3, generator=g) @ torch.randn(3, 16, generator=g)  # a rank-3 gradient
    comp = PowerSGD((32, 16), rank=3)
    p, q = comp.compress(low)
    torch.testing.assert_close(PowerSGD.decompress(p, q), low, atol=1e-4, rtol=1e-4)
    # error feedback loses nothing: what was sent plus what is still in the error buffer is
    # exactly the sum of the true gradients
    comp = PowerSGD((32, 16), rank=2, seed=1)
    sent, total = torch.zeros(32, 16), torch.zeros(32, 16)
    for _ in range(50):
        grad = torch.randn(32, 16, generator=g)
        sent += PowerSGD.decompress(*comp.compress(grad))
        total += grad
    torch.testing.assert_close(sent + comp.error, total, atol=1e-3, rtol=1e-4)
    # with Q fixed (the paper's choice), the residual always lies where Q does not look
    assert (comp.error @ comp.q).abs().max() < 1e-3
