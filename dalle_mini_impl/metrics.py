"""``metrics``: how good are generated images? FID, an IS-style score, caption accuracy.

Paper: Ramesh et al. 2021, section 3.1 (FID and IS on MS-COCO and CUB, figure 9: "we
evaluate FID and IS ... with and without reranking"), and the metrics themselves:
Heusel et al. 2017 (FID, *GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium*), Salimans et al. 2016 (IS, *Improved Techniques for Training GANs*),
Kynkaenniemi et al. 2019 (precision and recall of generative models).

The feature network
-------------------
FID compares two Gaussians fitted to features of real and generated images. The standard
FID uses Inception-v3 features of ImageNet-trained weights; those do not ship here and mean
little on 32x32 coloured shapes. We use the course's own shapes judge
(:mod:`dalle_mini_impl.judge`, trained on every attribute combination): its penultimate
layer (256 numbers after ReLU) is our feature space, and its class heads play Inception's
classifier for the IS-style score. **These numbers are comparable only within this course
(same judge checkpoint, same image size), never with published Inception-based FID/IS.**

Definitions
-----------
* Frechet distance of N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017, eq. 6; Dowson &
  Landau 1982):  ``d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
  ``Tr((S1 S2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the
  symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2}`` (it has the same eigenvalues as ``S1 S2``),
  in float64: no complex ``sqrtm`` residue.
* FID = Frechet distance of the feature statistics of two image sets.
* IS-style score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` with ``y`` the
  (colour, shape) class of the first object as the judge reads it (24 classes), so it lies
  in [1, 24]: high when each image is confidently one class and the classes are varied.
* caption accuracy (lesson 08, :func:`judge.caption_accuracy`): the share of images whose
  every captioned attribute the judge reads back.
* precision and recall (Kynkaenniemi et al. 2019): the share of generated images inside the
  k-NN manifold of real features, and the share of real images inside the generated one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .judge import ShapesJudge, caption_accuracy


@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64, and how many rows made them."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int


# --------------------------------------------------------------------------- Frechet distance
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes must be mu (D,), sigma (D, D) for the same D; got {mu1.shape}, "
                         f"{s1.shape}, {mu2.shape}, {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1  # symmetric PSD, same eigenvalues as s1 @ s2
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def feature_stats(features: torch.Tensor | np.ndarray) -> FeatureStats:
    """Mean and (unbiased) covariance of (N, D) features."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return FeatureStats(f.mean(0), np.cov(f, rowvar=False), f.shape[0])


def fid_from_features(real: torch.Tensor | np.ndarray | FeatureStats,
                      fake: torch.Tensor | np.ndarray | FeatureStats) -> float:
    """FID between two feature sets (or their precomputed ``FeatureStats``)."""
    a = real if isinstance(real, FeatureStats) else feature_stats(real)
    b = fake if isinstance(fake, FeatureStats) else feature_stats(fake)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# --------------------------------------------------------------------------- judge features
def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("images must be a (N, 3, S, S) tensor, uint8 in [0, 255] or float in [0, 1]")
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def judge_features(judge: ShapesJudge, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N, 3, S, S) -> (N, 256): the judge's penultimate layer, our FID feature space."""
    judge.eval()
    dev = next(judge.parameters()).device
    out = [judge.features(_as_float_images(images[s:s + batch_size]).to(dev) * 2 - 1).float().cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out)


def fid(judge: ShapesJudge, real_images: torch.Tensor, fake_images: torch.Tensor) -> float:
    """Course FID between two image sets, in the judge's feature space (see module doc)."""
    return fid_from_features(judge_features(judge, real_images), judge_features(judge, fake_images))


@torch.no_grad()
def class_probabilities(judge: ShapesJudge, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N, 24): p(colour, shape | x) of the first object as the judge reads it
    (the product of its colour and shape heads' softmax)."""
    judge.eval()
    dev = next(judge.parameters()).device
    probs = []
    for s in range(0, len(images), batch_size):
        out = judge(_as_float_images(images[s:s + batch_size]).to(dev))
        pc = F.softmax(out["colour"][:, 0].float(), -1)  # (B, 6)
        ps = F.softmax(out["shape"][:, 0].float(), -1)  # (B, 4)
        probs.append((pc[:, :, None] * ps[:, None, :]).flatten(1).cpu())  # (B, 24)
    return torch.cat(probs)


def inception_score_from_probs(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) for (N, K) class probabilities (Salimans et al. 2016)."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, K), got shape {tuple(probs.shape)}")
    p = probs.double()
    py = p.mean(0, keepdim=True)  # (1, K): the marginal
    kl = (p * ((p + eps).log() - (py + eps).log())).sum(1)  # (N,)
    return float(kl.mean().exp())


def inception_score(judge: ShapesJudge, images: torch.Tensor) -> float:
    """IS-style score with the judge's (colour, shape) classifier: in [1, 24] (module doc)."""
    return inception_score_from_probs(class_probabilities(judge, images))


# --------------------------------------------------------------------------- precision / recall
def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of (N, D) feature sets:
    precision = share of fake points within some real point's k-NN radius; recall = the
    share of real points within some fake point's k-NN radius."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points in each set")

    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # (N,): distance to the k-th neighbour (self excluded)

    def inside(points, manifold):
        return (torch.cdist(points, manifold) <= radii(manifold)[None]).any(1).double().mean().item()

    return inside(fake, real), inside(real, fake)


def evaluate_images(judge: ShapesJudge, images: torch.Tensor, captions: list[str],
                    real_images: torch.Tensor) -> dict[str, float]:
    """FID (vs ``real_images``), IS-style score and caption accuracy of generated ``images``."""
    return {"fid": fid(judge, real_images, images), "is": inception_score(judge, images),
            "caption_accuracy": caption_accuracy(judge, images, captions)}
