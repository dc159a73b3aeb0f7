"""Masks, the layer schedule and the three attention paths (lesson 06, appendix B.1)."""
import pytest
import torch

from dalle_mini_impl import attention as A
from dalle_mini_impl.attention import (BACKENDS, FLEX_AVAILABLE, MASK_KINDS, KVCache, MaskSpec,
                                       attention, attention_flex, attention_reference,
                                       attention_sdpa, build_block_mask, build_mask,
                                       layer_schedule)

T, G = 5, 4  # 5 text tokens, a 4x4 image: the size of the paper's figure 11 (which has 6 text)


def allowed_images(mask, j, text_len=T):
    """Raster indices of the image tokens image token j may attend to."""
    row = mask[text_len + j, text_len:]
    return set(torch.nonzero(row).flatten().tolist())


def test_text_is_causal_and_image_sees_all_text():
    for kind in MASK_KINDS:
        m = build_mask(kind, T, G, conv_kernel=3)
        assert m.shape == (T + G * G, T + G * G)
        assert torch.equal(m[:T, :T], torch.ones(T, T, dtype=torch.bool).tril())
        assert not m[:T, T:].any(), "text tokens must not see image tokens"
        assert m[T:, :T].all(), f"{kind}: every image token attends to every text token"
        assert not m.triu(1).any(), f"{kind}: mask is not causal"
        assert m.diagonal().all(), f"{kind}: every token attends to itself"


def test_row_mask_is_the_previous_W_plus_1_tokens():
    m = build_mask("row", T, G)
    assert allowed_images(m, 0) == {0}
    assert allowed_images(m, 3) == {0, 1, 2, 3}
    # token 9 = (row 2, col 1): itself and the 4 before; the furthest back is (row 1, col 1)
    assert allowed_images(m, 9) == {5, 6, 7, 8, 9}
    assert all(len(allowed_images(m, j)) == min(j + 1, G + 1) for j in range(G * G))


def test_column_mask_is_same_column_earlier_rows():
    m = build_mask("column", T, G)
    assert allowed_images(m, 13) == {1, 5, 9, 13}
    assert allowed_images(m, 2) == {2}


def test_conv_mask_3x3():
    # wraparound (paper): offsets on the raster index, |d - r*W| <= 1 for r in {0, 1}
    m = build_mask("conv", T, G, conv_kernel=3)
    assert allowed_images(m, 5) == {0, 1, 2, 4, 5}      # (1,1): 3 above, left, itself
    assert allowed_images(m, 4) == {0, 1, 3, 4}          # (1,0): left wraps to (0,3)
    assert allowed_images(m, 7) == {2, 3, 4, 6, 7}       # (1,3): above-right wraps to (1,0)
    # strict 2-D neighbourhood without wraparound
    m2 = build_mask("conv", T, G, conv_kernel=3, wraparound=False)
    assert allowed_images(m2, 4) == {0, 1, 4}
    assert allowed_images(m2, 7) == {2, 3, 6, 7}


def test_big_conv_kernel_without_wraparound_is_full_causal():
    assert torch.equal(build_mask("conv", T, G, conv_kernel=2 * G - 1, wraparound=False),
                       build_mask("full", T, G))


def test_schedule_depth_64_matches_appendix_b1():
    s = layer_schedule(64)
    assert len(s) == 64
    assert s[:4] == ["row", "column", "row", "row"]  # "row, column, row, row" (B.1)
    # paper layer i = index + 1; column iff (i - 2) mod 4 == 0 for i in 1..63
    assert [i + 1 for i, k in enumerate(s) if k == "column"] == list(range(2, 63, 4))
    assert s.count("column") == 16 and s.count("row") == 47
    assert s[-1] == "conv" and s.count("conv") == 1
    assert layer_schedule(1) == ["conv"]
    assert layer_schedule(3, "full") == ["full"] * 3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mask kind"):
        build_mask("diagonal", T, G)
    with pytest.raises(ValueError, match="odd"):
        build_mask("conv", T, G, conv_kernel=4)
    with pytest.raises(ValueError, match="full' or 'sparse"):
        layer_schedule(4, "dense")
    with pytest.raises(ValueError, match="backend"):
        attention(*torch.randn(3, 1, 1, T + G * G, 4), MaskSpec("row", T, G), "cuda")


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("text_len,grid,kernel", [(7, 6, 3), (3, 12, 11)])
def test_three_paths_agree(kind, text_len, grid, kernel):
    g = torch.Generator().manual_seed(0)
    L = text_len + grid * grid
    q, k, v = torch.randn(3, 2, 3, L, 16, generator=g)  # (B=2, nh=3, L, hd=16) each
    mask = build_mask(kind, text_len, grid, kernel)
    ref = attention_reference(q, k, v, mask)
    assert (ref - attention_sdpa(q, k, v, mask)).abs().max() < 1e-5
    if FLEX_AVAILABLE:
        bm = build_block_mask(kind, text_len, grid, kernel)
        assert (ref - attention_flex(q, k, v, bm)).abs().max() < 1e-5
    spec = MaskSpec(kind, text_len, grid, kernel)
    for backend in BACKENDS:
        assert (ref - attention(q, k, v, spec, backend)).abs().max() < 1e-5


def test_short_bf16_cpu_attention_written_out_agrees_with_sdpa(monkeypatch):
    """16-bit CPU attention over few keys runs written out (faster there); it computes what
    SDPA computes, forward and backward, within bfloat16 rounding."""
    g = torch.Generator().manual_seed(0)
    mask = build_mask("row", 8, 6)
    q, k, v = torch.randn(3, 2, 4, 44, 16, generator=g).to(torch.bfloat16).requires_grad_()
    out = attention_sdpa(q, k, v, mask)
    (gq,) = torch.autograd.grad(out.float().square().sum(), q)
    monkeypatch.setattr(A, "CPU_WRITTEN_OUT_MAX_LEN", 0)  # SDPA itself
    out2 = attention_sdpa(q, k, v, mask)
    (gq2,) = torch.autograd.grad(out2.float().square().sum(), q)
    torch.testing.assert_close(out.float(), out2.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gq.float(), gq2.float(), atol=5e-2, rtol=5e-2)
    assert torch.equal(out, attention_reference(q, k, v, mask))  # the short bf16 path is the written-out one


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_changing_a_future_token_leaves_earlier_outputs_unchanged(kind):
    g = torch.Generator().manual_seed(1)
    L = T + G * G
    spec = MaskSpec(kind, T, G, 3)
    q, k, v = torch.randn(3, 1, 2, L, 8, generator=g)
    for backend in BACKENDS:
        out = attention(q, k, v, spec, backend)
        positions = range(1, L) if backend != "flex" else (1, T - 1, T, T + G, L - 1)
        for p in positions:
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            for t in (q2, k2, v2):
                t[:, :, p:] += torch.randn(t[:, :, p:].shape, generator=g)
            out2 = attention(q2, k2, v2, spec, backend)
            assert torch.equal(out[:, :, :p], out2[:, :, :p]), (kind, backend, p)
            assert not torch.allclose(out[:, :, p], out2[:, :, p])


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_gradients_flow_exactly_where_the_mask_allows(kind):
    """Leak test: d out[q] / d value[k] is nonzero iff mask[q, k]."""
    L = T + G * G
    mask = build_mask(kind, T, G, 3)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 1, 1, L, 8, generator=g)
    v = torch.randn(1, 1, L, 8, generator=g, requires_grad=True)
    out = attention_sdpa(q, k, v, mask)  # (1, 1, L, 8)
    reach = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        (grad,) = torch.autograd.grad(out[0, 0, i].sum(), v, retain_graph=True)
        reach[i] = grad[0, 0].abs().sum(-1) > 0
    assert torch.equal(reach, mask)


def test_flex_has_no_cpu_backward_and_says_so():
    if not FLEX_AVAILABLE:
        pytest.skip("flex_attention unavailable")
    q = torch.randn(1, 1, T + G * G, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="backend='sdpa'"):
        attention(q, q, q, MaskSpec("row", T, G), "flex")


def test_flex_falls_back_when_unavailable(monkeypatch):
    monkeypatch.setattr(A, "FLEX_AVAILABLE", False)
    q, k, v = torch.randn(3, 1, 2, T + G * G, 8)
    spec = MaskSpec("column", T, G)
    assert torch.equal(attention(q, k, v, spec, "flex"), attention(q, k, v, spec, "sdpa"))
    with pytest.raises(RuntimeError, match="torch >= 2.5"):
        build_block_mask("row", T, G)


def test_kv_cache_write_and_overflow():
    c = KVCache.empty(n_layers=2, batch=1, n_heads=1, max_len=4, head_dim=2)
    k = torch.ones(1, 1, 3, 2)
    k_all, _ = c.write(1, 0, k, k)
    assert k_all.shape == (1, 1, 3, 2) and c.k[0].abs().sum() == 0
    with pytest.raises(ValueError, match="holds 4 positions"):
        c.write(1, 3, k, k)
