"""unclip.py and `python -m dalle_mini_impl.training prior`: the two priors, slerp, the files, resume."""
import json

import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl.clip import CLIP, CLIPConfig, load_clip
from dalle_mini_impl.diffusion import classifier_free
from dalle_mini_impl.training.__main__ import main
from dalle_mini_impl.unclip import (DiffusionPrior, DirectPrior, PriorConfig, fit_prior, load_priors, save_priors,
                                    slerp)

TINY = PriorConfig(embed_dim=8, width=32, blocks=1, T=50)


def toy_pairs(n=512, d=8, seed=0):
    """Text embeddings and image embeddings near a fixed rotation of them (a learnable map)."""
    g = torch.Generator().manual_seed(seed)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    img = F.normalize(txt @ rot + 0.05 * torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_both_priors_learn_a_map_from_text_to_image_embeddings():
    img, txt = toy_pairs()
    torch.manual_seed(0)
    prior, direct = DiffusionPrior(TINY), DirectPrior(TINY)
    text_only = (img * txt).sum(-1).mean().item()
    fit_prior(prior, img, txt, 600, batch_size=128, lr=2e-3)
    fit_prior(direct, img, txt, 300, batch_size=128, lr=2e-3)
    drawn = prior.sample(txt[:64], steps=20, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (64, 8)
    torch.testing.assert_close(drawn.norm(dim=-1), torch.ones(64))
    cos_prior = (drawn * img[:64]).sum(-1).mean().item()
    cos_direct = (direct(txt[:64]) * img[:64]).sum(-1).mean().item()
    assert cos_prior > text_only + 0.3 and cos_prior > 0.7, (cos_prior, text_only)
    assert cos_direct > 0.9, cos_direct


def test_fit_prior_resumes_exactly():
    img, txt = toy_pairs(128)
    torch.manual_seed(0)
    a = DirectPrior(TINY)
    b = DirectPrior(TINY)
    b.load_state_dict(a.state_dict())
    fit_prior(a, img, txt, 10, batch_size=16)
    opt = fit_prior(b, img, txt, 10, batch_size=16, stop=lambda k: k >= 4)
    fit_prior(b, img, txt, 10, batch_size=16, start=4, optimizer=opt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_slerp_ends_at_its_endpoints_and_stays_on_the_sphere():
    a, b = F.normalize(torch.randn(2, 8), dim=-1).unbind(0)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slerp(a, b, 0.3).norm(), torch.tensor(1.0))


def test_the_prior_file_names_its_clip(tmp_path):
    clip = load_clip("data/clip_shapes_heldout")
    cfg = PriorConfig(embed_dim=clip.config.embed_dim, width=32, blocks=1)
    save_priors(tmp_path / "prior.pt", DiffusionPrior(cfg), DirectPrior(cfg), clip)
    prior, direct = load_priors(tmp_path / "prior.pt", clip)
    assert isinstance(prior, DiffusionPrior) and isinstance(direct, DirectPrior)
    with pytest.raises(ValueError, match="another CLIP"):
        load_priors(tmp_path / "prior.pt", CLIP(CLIPConfig()))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        load_priors(tmp_path / "bad.pt")


def test_classifier_free_guidance_on_an_embedding_guides_against_the_zero_vector():
    calls = []

    def net(x, t, ids, embed=None):
        calls.append(len(x))
        return x * 0 + embed.sum(-1)[:, None, None, None] + ids.float().mean(-1)[:, None, None, None]
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([5, 6])
    ids, null, emb = torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4)
    assert torch.equal(classifier_free(net, ids, null, 1.0, emb)(x, t), net(x, t, ids, embed=emb))
    assert calls == [2, 2], "w = 1: one pass, no unconditional half"
    out = classifier_free(net, ids, null, 3.0, emb)(x, t)
    cond, uncond = net(x, t, ids, embed=emb), net(x, t, null, embed=torch.zeros_like(emb))
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))


PRIOR_ARGS = ["--n-train", "64", "--val-pairs", "8", "--width", "16", "--blocks", "1", "--batch-size", "8",
              "--log-every", "2", "--ckpt-every", "2", "--threads", "1"]


def test_prior_command_writes_logs_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(["prior", "--steps", "6", "--out", str(full), *PRIOR_ARGS])
    lines = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 4, 6]
    assert {"val_cos_diffusion", "val_cos_direct", "val_cos_text", "val_spread_diffusion"} <= set(lines[0])
    main(["prior", "--steps", "6", "--stop-after", "4", "--out", str(part), *PRIOR_ARGS])
    assert not (part / "prior.pt").exists() and (part / "resume.pt").exists()
    main(["prior", "--steps", "6", "--resume", "--out", str(part), *PRIOR_ARGS])
    a, b = (torch.load(p / "prior.pt", weights_only=True) for p in (full, part))
    assert all(torch.equal(a["prior"][k], b["prior"][k]) for k in a["prior"])
    assert all(torch.equal(a["direct"][k], b["direct"][k]) for k in a["direct"])
    assert [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
