"""Lesson 08: DALL-E assembled (dalle.py) and the generation CLI (__main__.py). Tiny sizes throughout so the file runs in well under a minute."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dalle_mini_impl.dalle import DALLE, DALLEConfig, dalle_loss, prior_config_for
from dalle_mini_impl.dvae import DiscreteVAE, DVAEConfig
from dalle_mini_impl.tokenizer import course_tokenizer
from dalle_mini_impl.transformer import filter_logits

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = ["a small red circle on the left", "a large blue square at the top"]


def tiny_dvae(seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(DVAEConfig.toy(image_size=16, grid=4, n_codes=32, n_hid=8, codebook_dim=8)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return course_tokenizer(text_len=12)


@pytest.fixture(scope="module")
def model(tokenizer):
    dvae = tiny_dvae()
    torch.manual_seed(1)
    cfg = DALLEConfig(prior_config_for(tokenizer, dvae, d_model=32, n_layers=2, n_heads=2))
    return DALLE(tokenizer, dvae, cfg).eval()


# --------------------------------------------------------------------------- the loss
def test_loss_weighting_on_a_hand_made_batch():
    # text: 2 positions, target probabilities 1/2 and 1/4 -> mean CE 1.5 ln 2
    # image: 4 positions, target probabilities 1, 1/2, 1/2, 1/8 -> mean CE 1.25 ln 2
    def logits_with(probs, vocab):
        rows = []
        for p in probs:  # target is token 0 with probability p; the rest share 1 - p
            row = torch.full((vocab,), (1 - p) / (vocab - 1) if p < 1 else 1e-30)
            row[0] = p
            rows.append(row.log())
        return torch.stack(rows)[None]  # (1, L, V)

    tl = logits_with([0.5, 0.25], 4)
    il = logits_with([1.0, 0.5, 0.5, 0.125], 8)
    t_ids, i_ids = torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    out = dalle_loss(tl, il, t_ids, i_ids)
    ln2 = math.log(2)
    assert out["text"].item() == pytest.approx(1.5 * ln2, rel=1e-5)
    assert out["image"].item() == pytest.approx(1.25 * ln2, rel=1e-5)
    assert out["loss"].item() == pytest.approx(1.5 * ln2 / 8 + 7 * 1.25 * ln2 / 8, rel=1e-5)
    # each part is normalised by its own token count: doubling the batch changes nothing,
    # while a sum over tokens would double
    out2 = dalle_loss(tl.repeat(2, 1, 1), il.repeat(2, 1, 1), t_ids.repeat(2, 1), i_ids.repeat(2, 1))
    assert out2["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    # the weight is a knob: all text or all image
    assert dalle_loss(tl, il, t_ids, i_ids, text_weight=1.0)["loss"].item() == pytest.approx(1.5 * ln2, rel=1e-5)
    with pytest.raises(ValueError, match="text_weight"):
        dalle_loss(tl, il, t_ids, i_ids, text_weight=1.5)


def test_model_loss_is_the_weighted_cross_entropy_of_its_logits(model):
    text = model.encode_text(CAPTIONS)
    image = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(text, image)
    tl, il = model.prior(text, image)
    t = torch.nn.functional.cross_entropy(tl.flatten(0, 1), text.flatten())
    i = torch.nn.functional.cross_entropy(il.flatten(0, 1), image.flatten())
    torch.testing.assert_close(out["loss"], t / 8 + 7 * i / 8)


# --------------------------------------------------------------------------- sampling
def test_generate_with_cache_equals_without(model):
    kw = dict(n=2, top_k=8, seed=123, return_tokens=True)
    img_c, tok_c = model.generate(CAPTIONS, use_cache=True, **kw)
    img_n, tok_n = model.generate(CAPTIONS, use_cache=False, **kw)
    assert tok_c.shape == (4, 16) and img_c.shape == (4, 3, 16, 16)
    assert torch.equal(tok_c, tok_n)
    assert torch.equal(img_c, img_n)
    # same seed, same images; another seed, other images
    assert torch.equal(model.generate(CAPTIONS, **kw)[1], tok_c)
    assert not torch.equal(model.generate(CAPTIONS, n=2, top_k=8, seed=7, return_tokens=True)[1], tok_c)


def test_classifier_free_guidance(model):
    kw = dict(n=2, top_k=8, seed=11, return_tokens=True)
    plain = model.generate(CAPTIONS, **kw)[1]
    assert torch.equal(model.generate(CAPTIONS, guidance=1.0, **kw)[1], plain), "s = 1 is unguided sampling"
    guided = model.generate(CAPTIONS, guidance=3.0, precision="fp32", **kw)[1]  # float32: the two paths agree
    assert torch.equal(guided, model.generate(CAPTIONS, guidance=3.0, use_cache=False, precision="fp32", **kw)[1])
    assert not torch.equal(guided, plain)
    # s = 0 samples the empty caption's stream alone
    empty = model.tokenizer.pad_ids().expand(4, -1)
    uncond = model.generate_tokens(empty, top_k=8, generator=torch.Generator().manual_seed(11))
    text = model.encode_text(CAPTIONS).repeat_interleave(2, 0)
    assert torch.equal(model.generate_tokens(text, top_k=8, generator=torch.Generator().manual_seed(11),
                                             guidance=0.0), uncond)
    # the guided logits are uncond + s (cond - uncond), token by token (first token, greedy)
    cond_l = model.prior.prefill(text, model.prior.init_cache(4))
    unc_l = model.prior.prefill(empty, model.prior.init_cache(4))
    first = model.generate_tokens(text, temperature=0, guidance=2.5)[:, 0]
    assert torch.equal(first, (unc_l + 2.5 * (cond_l - unc_l)).argmax(-1))
    from dalle_mini_impl.transformer import generate_image_tokens
    with pytest.raises(ValueError, match="null_ids"):
        generate_image_tokens(model.prior, text, guidance=2.0)


def test_caption_dropout_is_seeded_and_near_its_rate():
    from dalle_mini_impl.training.common import drop_captions
    ids = torch.arange(4000 * 3).view(4000, 3)
    empty = torch.tensor([-1, -2, -3])
    a = drop_captions(ids, 0.2, empty, seed=0, step=5)
    assert torch.equal(a, drop_captions(ids, 0.2, empty, seed=0, step=5)), "same (seed, step): same drops"
    dropped = (a == empty).all(1)
    assert 0.18 < dropped.float().mean().item() < 0.22
    assert torch.equal(a[~dropped], ids[~dropped])
    assert not torch.equal(a, drop_captions(ids, 0.2, empty, seed=0, step=6))
    assert torch.equal(drop_captions(ids, 0.0, empty, seed=0, step=5), ids)


def test_priming_keeps_the_top_rows(model):
    prime = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = model.encode_images(prime)  # (2, 16)
    kw = dict(n=1, top_k=8, seed=5, prime_images=prime, prime_rows=2, return_tokens=True)
    _, tok = model.generate(CAPTIONS, **kw)
    assert torch.equal(tok[:, :8], ids[:, :8])
    assert torch.equal(tok, model.generate(CAPTIONS, use_cache=False, **kw)[1])
    with pytest.raises(ValueError, match="prime_rows"):
        model.generate(CAPTIONS, prime_images=prime, prime_rows=4)


def test_top_p_and_top_k_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).log_softmax(-1)
    kept_k = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept_k.tolist() == [[True, True, False, False, False]]
    p = logits.softmax(-1)[0]
    kept_p = torch.isfinite(filter_logits(logits, top_p=float(p[0]) + 1e-4))
    assert kept_p.tolist() == [[True, True, False, False, False]]  # the top token alone falls short
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_bad_captions_raise_clear_errors(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate([""])
    with pytest.raises(ValueError, match="empty"):
        model.generate(["   "])
    with pytest.raises(ValueError, match="at least one caption"):
        model.generate([])
    with pytest.raises(ValueError, match="tokens long"):
        model.generate(["a small red circle on the left " * 4])
    with pytest.raises(TypeError, match="not a str"):
        model.generate(["a red circle", 42])
    with pytest.raises(TypeError, match="str or a list"):
        model.generate(3.14)
    with pytest.raises(ValueError, match="n must be"):
        model.generate(CAPTIONS, n=0)
    # the real cause of a too-long short caption: words the vocabulary does not hold
    with pytest.raises(ValueError, match="'orange', 'hexagon', 'big' are not in this model's vocabulary"):
        model.generate(["a small orange hexagon on the left of the big one"])
    for caption in ("a red hexagon", "!!!"):  # within the length, but nothing to follow: said
        with pytest.warns(UserWarning, match="never saw"):
            model.generate([caption])


def test_save_load_round_trip_gives_identical_samples(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = DALLE.load(tmp_path / "m")
    a = model.generate(CAPTIONS, n=2, top_k=8, seed=3)
    b = loaded.generate(CAPTIONS, n=2, top_k=8, seed=3)
    assert torch.equal(a, b)
    assert loaded.config == model.config
    shared = tmp_path / "shared_dvae.pt"  # a run without its own dvae.pt, loaded with a shared one
    (tmp_path / "m" / "dvae.pt").rename(shared)
    with pytest.raises(FileNotFoundError, match=r"missing \['dvae.pt'\]"):
        DALLE.load(tmp_path / "m")
    for dvae in (shared, DiscreteVAE.load(shared)):
        assert torch.equal(DALLE.load(tmp_path / "m", dvae=dvae).generate(CAPTIONS, n=2, top_k=8, seed=3), a)
    with pytest.raises(FileNotFoundError, match="no DALL-E model directory"):
        DALLE.load(tmp_path / "nothing")
    (tmp_path / "m" / "prior.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        DALLE.load(tmp_path / "m")


def test_mismatched_parts_are_refused(tokenizer):
    dvae = tiny_dvae()
    cfg = DALLEConfig(prior_config_for(tokenizer, dvae, d_model=32, n_layers=1, n_heads=2))
    cfg.prior.image_vocab = 64
    with pytest.raises(ValueError, match="n_codes"):
        DALLE(tokenizer, dvae, cfg)


# --------------------------------------------------------------------------- the CLI
def test_generate_cli(tmp_path, model):
    from dalle_mini_impl.__main__ import main

    model.save(tmp_path / "m")
    out = tmp_path / "grid.png"
    assert main(["generate", CAPTIONS[0], CAPTIONS[1], "--model", str(tmp_path / "m"), "--n", "2",
                 "--out", str(out), "--threads", "1"]) == 0
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (4 * (2 * 16 + 3), 4 * (2 * 16 + 3))
    assert main(["generate", "", "--model", str(tmp_path / "m"), "--out", str(out)]) == 2
    assert main(["generate", CAPTIONS[0], "--model", str(tmp_path / "m"), "--out", str(tmp_path)]) == 2  # a folder
    with pytest.raises(SystemExit) as exc:
        main(["generate", CAPTIONS[0], "--n", "0"])
    assert exc.value.code == 2
