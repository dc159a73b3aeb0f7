"""Tests for dalle_mini_impl.precision (lesson 07: mixed precision, paper 2.4 and appendix D)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dalle_mini_impl.precision import (ActivationGradHooks, DeepResidualStack, DeepStackConfig,
                                       GradientMonitor, GradScaleConfig, PerResblockGradScaler,
                                       check_fp32_master_weights, float16_stats, fp32_logits,
                                       pick_precision, PRECISION_ENV, replay_scales, teacher_task,
                                       underflow_fraction, update_log2_scale)

@pytest.fixture(autouse=True)
def one_thread():
    """Small matmuls run faster on one thread (and the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


G = 1 / 1000  # appendix D growth per update, in log2


# --------------------------------------------------------------------------- seeing underflow
def test_float16_stats_counts_zero_subnormal_nonfinite():
    t = torch.tensor([0.0, 1e-9, 1e-6, 1e-3, 1.0, 7e4, float("nan")])
    st = float16_stats(t)
    # 0 and 1e-9 (< 2**-25) round to zero; 1e-6 is subnormal (< 2**-14); 7e4 > 65504 -> inf
    assert st == {"numel": 7, "zero": 2, "subnormal": 1, "nonfinite": 2}
    assert underflow_fraction(st) == pytest.approx(3 / 7)
    st_bf = float16_stats(t, torch.bfloat16)  # bf16 has float32's range: nothing underflows
    assert st_bf["zero"] == 1 and st_bf["subnormal"] == 0 and st_bf["nonfinite"] == 1
    with pytest.raises(TypeError):
        float16_stats(torch.tensor([1, 2]))


def test_gradient_monitor_records_true_norms():
    torch.manual_seed(0)
    m = DeepResidualStack(DeepStackConfig(n_blocks=4, d_model=8, hidden=16, d_in=4))
    x, y = teacher_task(16, m.config)
    mon = GradientMonitor(m.branches, divide_by=8.0)
    (8.0 * F.cross_entropy(m(x), y)).backward()
    assert len(mon.history) == 1 and len(mon.last("norm")) == 4
    ref = GradientMonitor(m.branches)
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(torch.tensor(mon.history[0][0]["norm"]),
                               torch.tensor(ref.last("norm")[0]), rtol=1e-5, atol=0)
    # the lesson's stack: gradient norms fall from the first resblock to the last
    n = ref.last("norm")
    assert n[0] > n[1] > n[2] > n[3]


# --------------------------------------------------------------------------- the update rule
def test_update_rule_hand_trace():
    cfg = GradScaleConfig()  # M = 1
    s, last = 13.0, None
    trace = []
    events = ([False] * 3 + [True] + [False] * 2 + [True]  # overflow at step 3, again at 6 (held)
              + [False] * 121 + [True]                       # step 128: 125 after step 3 -> divide
              + [True])                                      # step 129: held again
    for t, bad in enumerate(events):
        s, last = update_log2_scale(s, bad, t, last, cfg)
        trace.append((round(s, 9), last))
    assert trace[0] == (13.001, None) and trace[2] == (13.003, None)
    assert trace[3] == (12.503, 3)            # / sqrt(2), update skipped
    assert trace[5] == (12.505, 3)            # growth resumes
    assert trace[6] == (12.505, 3)            # within 125 updates: no division, no growth
    assert trace[127] == (round(12.505 + 121 * G, 9), 3)
    assert trace[128] == (round(12.505 + 121 * G - 0.5, 9), 128)  # step 128 - 3 >= 125
    assert trace[129] == trace[128]
    # clamps [M 2**7, M 2**24]
    assert update_log2_scale(24.0, False, 0, None, cfg) == (24.0, None)
    assert update_log2_scale(7.2, True, 0, None, cfg) == (7.0, 0)
    # M = 4: start M * 2**13 = 2**15, clamp [2**9, 2**26]
    cfg4 = GradScaleConfig(n_replicas=4)
    assert update_log2_scale(26.0, False, 0, None, cfg4)[0] == 26.0
    assert update_log2_scale(9.1, True, 0, None, cfg4)[0] == 9.0
    with pytest.raises(ValueError):
        GradScaleConfig(n_replicas=0)


def _stack(n_blocks=4, seed=0):
    torch.manual_seed(seed)
    cfg = DeepStackConfig(n_blocks=n_blocks, d_model=16, hidden=32, d_in=8, growth=1.5)
    return DeepResidualStack(cfg)


def test_scaler_follows_the_rule_step_by_step():
    m = _stack()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    sc = PerResblockGradScaler(m.branches, GradScaleConfig(n_replicas=2), emulate=torch.float16)
    assert sc.scales == [2.0 ** 14] * 4  # M * 2**13 with M = 2
    x, y = teacher_task(8, m.config)
    for _ in range(3):
        F.cross_entropy(m(x), y).backward()
        assert sc.step(opt)
        opt.zero_grad()
    torch.testing.assert_close(torch.tensor(sc.log2_scales, dtype=torch.float64), torch.full((4,), 14 + 3 * G, dtype=torch.float64))
    assert sc.n_updates == 3 and sc.n_skipped == 0


def test_inf_in_one_resblock_skips_update_and_backs_off_only_that_scale():
    m = _stack(n_blocks=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    sc = PerResblockGradScaler(m.branches, emulate=torch.float16)
    x, y = teacher_task(16, m.config)
    F.cross_entropy(m(x), y, reduction="sum").backward()  # a first, normal update
    assert sc.step(opt)
    opt.zero_grad()
    sc.log2_scales[2] = 40.0  # resblock 2's float16 gradients now overflow to inf
    before = {k: v.clone() for k, v in m.state_dict().items()}
    scales_before = list(sc.log2_scales)
    F.cross_entropy(m(x), y, reduction="sum").backward()
    assert sc.nonfinite_blocks() == [False, False, True, False]
    # filtered at the branch exit: the resblocks before it still got finite gradients
    assert all(torch.isfinite(p.grad).all() for p in m.blocks[0].parameters())
    assert not sc.step(opt)
    opt.zero_grad()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on a skipped update"
    assert sc.log2_scales[2] == 24.0  # divided by sqrt(2): 2**39.5, then clamped to M 2**24
    for i in (0, 1, 3):  # the other resblocks: their own rule (finite -> grow), no backoff
        assert sc.log2_scales[i] == pytest.approx(scales_before[i] + G)
    assert sc.n_skipped == 1 and sc.skipped_per_block == [0, 0, 1, 0]
    assert sc.skip_rate == 0.5


def test_scaler_gradients_equal_float32_gradients_when_nothing_underflows():
    m = _stack()
    x, y = teacher_task(16, m.config)
    F.cross_entropy(m(x), y, reduction="sum").backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    sc = PerResblockGradScaler(m.branches)  # no emulation: only scale and unscale (powers of 2)
    F.cross_entropy(m(x), y, reduction="sum").backward()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    sc.step(opt)
    for p, r in zip(m.parameters(), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-30)


def test_float16_run_with_scaling_matches_float32_loss_and_global_scale_underflows():
    cfg = DeepStackConfig(n_blocks=18, growth=1.5)
    x, y = teacher_task(64 * 30, cfg)
    torch.manual_seed(0)
    m = DeepResidualStack(cfg)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    hooks = ActivationGradHooks(m.branches, track_stats=True)
    amax, losses32 = [], []
    for i in range(30):
        loss = F.cross_entropy(m(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64], reduction="sum")
        loss.backward(); opt.step(); opt.zero_grad()
        losses32.append(loss.item())
        amax.append([math.log2(a) for a in hooks.last("amax")])
    hooks.remove()
    state = replay_scales(torch.tensor(amax).numpy(), 12000)["state"]
    torch.manual_seed(0)
    m = DeepResidualStack(cfg)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    sc = PerResblockGradScaler(m.branches, emulate=torch.float16)
    sc.load_state_dict(state)
    losses16 = []
    for i in range(30):
        loss = F.cross_entropy(m(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64], reduction="sum")
        loss.backward(); sc.step(opt); opt.zero_grad()
        losses16.append(loss.item())
        check_fp32_master_weights(m, opt)
    end32, end16 = sum(losses32[-5:]) / 5, sum(losses16[-5:]) / 5
    assert abs(end16 - end32) < 0.05 * end32, (end16, end32)
    assert max(sc.last("underflow")) < 1e-3
    # the same model with one global scale (the largest that does not overflow block 0)
    g = ActivationGradHooks(m.branches, emulate=torch.float16)
    sc.remove()
    s = 2.0 ** math.floor(16 - max(r[0] for r in amax) - 0.5)
    (s * F.cross_entropy(m(x[:64]), y[:64], reduction="sum")).backward()
    uf = g.last("underflow")
    assert uf[-1] > 0.01 and uf[-1] > 10 * max(uf[0], 1e-4)


def test_real_float16_autocast_with_scaler_on_cpu_keeps_master_weights_fp32():
    m = _stack(n_blocks=3)
    x, y = teacher_task(8, m.config)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    sc = PerResblockGradScaler(m.branches)  # real float16 gradients inside the branches
    with torch.autocast("cpu", dtype=torch.float16):
        logits = m(x)
    assert logits.dtype == torch.float32  # fp32_logits
    F.cross_entropy(logits, y).backward()
    assert sc.step(opt)
    check_fp32_master_weights(m, opt)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    for st in opt.state.values():
        assert st["exp_avg"].dtype == torch.float32


def test_check_fp32_master_weights_catches_half_models():
    m = _stack(n_blocks=2)
    m.blocks[0].half()
    with pytest.raises(AssertionError, match="master weight"):
        check_fp32_master_weights(m)


# --------------------------------------------------------------------------- picking a precision
@pytest.fixture
def no_env(monkeypatch):
    """The policy as a fresh shell sees it: no $DALLE_PRECISION (the portable test mode sets it)."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)


def test_pick_precision_device_rules(no_env):
    assert pick_precision("cpu", bf16_supported=True).dtype == torch.bfloat16
    assert pick_precision("cpu", bf16_supported=True).scaler is None
    p = pick_precision("cuda", bf16_supported=False)  # an older CUDA card (T4, V100)
    assert p.dtype == torch.float16 and isinstance(p.scaler, torch.amp.GradScaler)
    assert pick_precision("cuda", bf16_supported=True).dtype == torch.bfloat16
    assert pick_precision("mps", bf16_supported=False).dtype == torch.float32
    assert pick_precision("cpu", prefer="fp32").name == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        pick_precision("cpu", prefer="fp8")


def test_auto_on_a_cpu_without_native_bf16_is_float32(no_env, monkeypatch):
    from dalle_mini_impl import utils
    monkeypatch.setattr(utils, "cpu_bf16_native", lambda: False)   # an AVX2-only CPU
    p = pick_precision("cpu")
    assert p.name == "fp32" and "no native bf16" in p.reason
    monkeypatch.setattr(utils, "cpu_bf16_native", lambda: True)    # AVX512_BF16 / AMX
    assert pick_precision("cpu").name == "bf16"
    assert pick_precision("cpu", prefer="auto").name == "bf16"


def test_cpu_bf16_native_needs_onednn_and_the_instructions(monkeypatch):
    from dalle_mini_impl import utils
    flags = {"ops.mkldnn._is_mkldnn_bf16_supported": True, "cpu._is_avx512_bf16_supported": False,
             "cpu._is_amx_tile_supported": False}
    monkeypatch.setattr(utils, "_torch_flag", lambda name: flags[name])
    monkeypatch.setattr(utils.platform, "machine", lambda: "x86_64")
    for mkldnn, avx512_bf16, amx, expected in [(True, False, False, False),   # AVX-512 without bf16
                                               (True, True, False, True), (True, False, True, True),
                                               (False, True, True, False)]:   # ONEDNN_MAX_CPU_ISA=AVX2
        flags.update({"ops.mkldnn._is_mkldnn_bf16_supported": mkldnn,
                      "cpu._is_avx512_bf16_supported": avx512_bf16, "cpu._is_amx_tile_supported": amx})
        utils.cpu_bf16_native.cache_clear()
        assert utils.cpu_bf16_native() is expected, flags
    monkeypatch.setattr(utils.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(utils.platform, "system", lambda: "Darwin")
    utils.cpu_bf16_native.cache_clear()
    assert utils.cpu_bf16_native() is False
    utils.cpu_bf16_native.cache_clear()


def test_environment_variable_and_argument_override_auto(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert pick_precision("cpu", bf16_supported=True).name == "fp32"
    assert pick_precision("cpu", bf16_supported=True).reason == f"${PRECISION_ENV}"
    assert pick_precision("cpu", prefer="bf16", bf16_supported=True).name == "bf16"  # the argument wins
    monkeypatch.setenv(PRECISION_ENV, "BF16 ")
    assert pick_precision("cuda", bf16_supported=True).name == "bf16"
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=r"\$DALLE_PRECISION"):
        pick_precision("cpu")


def test_forcing_bf16_on_a_cpu_without_it_warns(no_env):
    with pytest.warns(UserWarning, match="7-40x slower"):
        assert pick_precision("cpu", prefer="bf16", bf16_supported=False).name == "bf16"


@pytest.mark.parametrize("prefer", ["fp32", "bf16", "fp16"])
def test_a_nonfinite_gradient_never_changes_a_weight(prefer, no_env):
    m = _stack(n_blocks=2)
    x, y = teacher_task(8, m.config)
    p = pick_precision("cpu", prefer=prefer, bf16_supported=True)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with p.autocast():
        loss = F.cross_entropy(m(x), y) * float("nan")
    assert not p.backward_step(loss, opt)
    assert p.n_skipped == 1
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("prefer", ["fp32", "bf16", "fp16"])
def test_precision_training_step_on_cpu(prefer):
    m = _stack(n_blocks=2)
    x, y = teacher_task(8, m.config)
    p = pick_precision("cpu", prefer=prefer)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    before = m.head.weight.detach().clone()
    with p.autocast():
        logits = m(x)
    assert p.backward_step(F.cross_entropy(logits, y), opt)
    assert not torch.equal(before, m.head.weight)
    check_fp32_master_weights(m, opt)


def test_fp32_logits_inside_autocast():
    head = nn.Linear(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(2, 4)).dtype == torch.bfloat16
        assert fp32_logits(head, torch.randn(2, 4)).dtype == torch.float32


def test_bad_branches_raise():
    with pytest.raises(ValueError, match="no resblocks"):
        PerResblockGradScaler([])
    with pytest.raises(TypeError, match="nn.Module"):
        PerResblockGradScaler([lambda x: x])
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="shared"):
        PerResblockGradScaler([lin, lin])


def test_transformer_style_block_with_two_branches():
    """A pre-norm block with attention and MLP branches (as in lesson 08) shares one scale."""
    class Attn(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ln, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, 2, batch_first=True)

        def forward(self, x):
            h = self.ln(x)
            return self.attn(h, h, h, need_weights=False)[0]

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.attn_branch = Attn(d)
            self.mlp_branch = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x):
            x = x + self.attn_branch(x)
            return x + self.mlp_branch(x)

    torch.manual_seed(0)
    blocks = nn.Sequential(Block(8), Block(8))
    x = torch.randn(2, 5, 8)
    blocks(x).square().sum().backward()
    ref = [p.grad.clone() for p in blocks.parameters()]
    blocks.zero_grad()
    sc = PerResblockGradScaler([[b.attn_branch, b.mlp_branch] for b in blocks])
    blocks(x).square().sum().backward()
    sc.step(torch.optim.SGD(blocks.parameters(), lr=0.0))
    for p, r in zip(blocks.parameters(), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-6)
    # one backward gives one row of statistics, each block counting both of its branches'
    # gradients at entry and exit (a row used to close after the first branch of each block)
    sc.stats.clear()
    blocks.zero_grad()
    blocks(x).square().sum().backward()
    assert len(sc.stats) == 1 and not sc._pending
    assert [row["numel"] for row in sc.stats[0]] == [3 * x.numel(), 4 * x.numel()]  # block 0: x needs no grad
    blocks.zero_grad()
    blocks(x).square().sum().backward()
    assert len(sc.stats) == 2 and sc.stats[1] == sc.stats[0]
    sc.remove()
