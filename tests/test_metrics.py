"""Tests of lesson 10's metrics: Frechet distance, FID plumbing, the IS-style score."""
import numpy as np
import pytest
import scipy.linalg
import torch

from dalle_mini_impl.metrics import (feature_stats, fid_from_features, frechet_distance,
                                     inception_score_from_probs, precision_recall)


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_identical_gaussians_have_distance_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    st = feature_stats(a)
    assert abs(frechet_distance(st.mu, st.sigma, st.mu, st.sigma)) < 1e-8
    assert abs(fid_from_features(torch.from_numpy(a), torch.from_numpy(a))) < 1e-8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_on_random_features(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    b = rng.normal(size=(300, 24)) * rng.uniform(0.5, 2, size=24) + rng.normal(size=24)
    sa, sb = feature_stats(a), feature_stats(b)
    want = _scipy_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma)
    got = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert got == pytest.approx(want, rel=1e-6)
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(want, rel=1e-6)


def test_one_dimensional_closed_form():
    # N(0, 1) vs N(3, 4): d^2 = 9 + 1 + 4 - 2 * 2 = 10
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))


def test_inception_score_bounds():
    k = 24
    confident_varied = torch.eye(k).repeat(3, 1)  # every class, each image certain
    assert inception_score_from_probs(confident_varied) == pytest.approx(k, rel=1e-6)
    one_class = torch.zeros(30, k)
    one_class[:, 5] = 1
    assert inception_score_from_probs(one_class) == pytest.approx(1.0, abs=1e-6)
    uniform = torch.full((30, k), 1 / k)
    assert inception_score_from_probs(uniform) == pytest.approx(1.0, abs=1e-6)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=g)
    p, r = precision_recall(real, real.clone())
    assert p == 1.0 and r == 1.0
    far = torch.randn(300, 4, generator=g) + 50
    p, r = precision_recall(real, far)
    assert p == 0.0 and r == 0.0
    collapsed = real[:1].repeat(300, 1) + 1e-3 * torch.randn(300, 4, generator=g)
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.1  # realistic but not diverse: high precision, low recall
