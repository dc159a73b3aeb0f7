"""The prior: shapes, causality, KV cache, backends, autocast (lesson 06)."""
import pytest
import torch

from dalle_mini_impl.attention import FLEX_AVAILABLE
from dalle_mini_impl.transformer import (Transformer, TransformerConfig, generate_image_tokens)

T, G = 5, 4


def make(attention="sparse", backend="sdpa", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = TransformerConfig(text_vocab=30, image_vocab=20, text_len=T, image_grid=G, d_model=32,
                            n_layers=4, n_heads=2, attention=attention, conv_kernel=3,
                            backend=backend, **kw)
    return Transformer(cfg).eval()


def data(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (B, T), generator=g), torch.randint(0, 20, (B, G * G), generator=g)


def stream_logits(model, text, image):
    """Logits predicting every stream token (text then image), each row padded to 30."""
    tl, il = model(text, image)
    il = torch.nn.functional.pad(il, (0, 30 - 20))
    return torch.cat([tl, il], dim=1)  # (B, T+N, 30)


def test_shapes_and_schedule():
    m = make()
    text, image = data()
    tl, il = m(text, image)
    assert tl.shape == (2, T, 30) and il.shape == (2, G * G, 20)
    assert [b.kind for b in m.blocks] == ["row", "column", "row", "conv"]
    assert [b.kind for b in make("full").blocks] == ["full"] * 4
    _, il3 = m(text, image[:, :3])  # a prefix of the image gives the same first logits
    torch.testing.assert_close(il3, il[:, :3])


@pytest.mark.parametrize("attention", ["sparse", "full", ("row",) * 4, ("column",) * 4,
                                       ("conv",) * 4])
def test_changing_any_future_token_leaves_earlier_predictions_unchanged(attention):
    m = make(attention)
    text, image = data()
    base = stream_logits(m, text, image)
    stream = torch.cat([text, image], dim=1)
    for s in range(T + G * G):
        changed = stream.clone()
        changed[:, s] = (changed[:, s] + 1) % (30 if s < T else 20)
        out = stream_logits(m, changed[:, :T], changed[:, T:])
        # logits predicting tokens 0..s read only tokens before them
        assert torch.equal(out[:, :s + 1], base[:, :s + 1]), (attention, s)
        if s + 1 < T + G * G:
            assert not torch.allclose(out[:, s + 1], base[:, s + 1])


@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_kv_cache_gives_the_full_forward_logits(attention):
    m = make(attention)
    text, image = data(B=3)
    full = stream_logits(m, text, image)
    cache = m.init_cache(3)
    stream = torch.cat([text, image], dim=1)
    for p in range(m.config.seq_len):
        logits = m.step(None if p == 0 else stream[:, p - 1], p, cache)
        assert (logits - full[:, p, :logits.shape[-1]]).abs().max() < 1e-5, p
    cache = m.init_cache(3)
    assert (m.prefill(text, cache) - full[:, T, :20]).abs().max() < 1e-5
    assert (m.step(image[:, 0], T + 1, cache) - full[:, T + 1, :20]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="in order"):
        m.step(image[:, 0], T + 5, cache)


def test_sampling_with_and_without_cache_agree():
    m = make()
    text, _ = data(B=2)
    a = generate_image_tokens(m, text, True, generator=torch.Generator().manual_seed(3))
    b = generate_image_tokens(m, text, False, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, G * G) and torch.equal(a, b)


def test_backends_agree():
    text, image = data()
    ref = make(backend="reference")
    backends = ["sdpa"] + (["flex"] if FLEX_AVAILABLE else [])
    with torch.no_grad():
        r = stream_logits(ref, text, image)
        for b in backends:
            assert (stream_logits(make(backend=b), text, image) - r).abs().max() < 1e-5, b


def test_bf16_autocast_forward_and_backward():
    m = make().train()
    text, image = data()
    with torch.autocast("cpu", torch.bfloat16):
        tl, il = m(text, image)
        loss = (torch.nn.functional.cross_entropy(tl.flatten(0, 1), text.flatten())
                + torch.nn.functional.cross_entropy(il.flatten(0, 1), image.flatten()))
    assert il.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        cache = m.eval().init_cache(2)
        assert torch.isfinite(m.prefill(text, cache).float()).all()


def test_training_lowers_the_loss():
    m = make().train()
    text, image = data(B=4)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        tl, il = m(text, image)
        loss = (torch.nn.functional.cross_entropy(tl.flatten(0, 1), text.flatten()) / 8
                + torch.nn.functional.cross_entropy(il.flatten(0, 1), image.flatten()) * 7 / 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_branches_are_hookable_modules():
    m = make()
    text, image = data()
    calls = []
    hooks = [b.attn_branch.register_forward_hook(lambda mod, i, o: calls.append("attn"))
             for b in m.blocks]
    hooks += [b.mlp_branch.register_forward_hook(lambda mod, i, o: o * 0) for b in m.blocks]
    tl, _ = m(text, image)
    assert calls == ["attn"] * 4
    for h in hooks:
        h.remove()
    assert not torch.allclose(tl, m(text, image)[0]), "zeroing the MLP branches changes the output"


def test_bad_input_raises():
    m = make()
    text, image = data()
    with pytest.raises(ValueError, match="text_ids must be"):
        m(text[:, :3], image)
    with pytest.raises(ValueError, match=r"image ids must be in \[0, 20\)"):
        m(text, image + 20)
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="'full' or 'sparse'"):
        TransformerConfig(attention="axial")
    with pytest.raises(ValueError, match="kinds from"):
        TransformerConfig(n_layers=2, attention=("row",))
