"""Parameters, memory and FLOPs of a preset without building it (training/sizing.py), checked
against what autograd saves, what FlopCounterMode counts and the cards the GPU presets are for."""
import pytest
import torch

from dalle_mini_impl.presets import PRESETS
from dalle_mini_impl.training import sizing
from dalle_mini_impl.transformer import Transformer, TransformerConfig
from dalle_mini_impl.utils import count_parameters_meta

torch.set_num_threads(1)


def _saved_bytes(cfg, batch):
    torch.manual_seed(0)
    model = Transformer(cfg)
    text = torch.randint(0, cfg.text_vocab, (batch, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab, (batch, cfg.image_len))

    def step():
        from dalle_mini_impl.dalle import dalle_loss
        with torch.autocast("cpu", torch.bfloat16):
            t, i = model(text, image)
        return dalle_loss(t, i, text, image)["loss"]

    return sizing.saved_activation_bytes(step, list(model.parameters())), model


def test_transformer_activation_formula_against_saved_tensors(monkeypatch):
    """The formula (38 s b d per layer + 12 bytes per logit) against what autograd really
    keeps for a small prior under bf16 autocast, with SDPA's fused kernel (what GPUs run; on
    CPU short 16-bit sequences otherwise run the written-out attention, which keeps the
    attention probabilities: then the measurement exceeds the formula by at least that term). The
    measurement includes the 16-bit weight copies, which the estimate counts with the states
    (2 bytes per parameter)."""
    from dalle_mini_impl import attention

    cfg = TransformerConfig(text_vocab=435, image_vocab=512, text_len=32, image_grid=8,
                            d_model=128, n_layers=3, n_heads=4)
    monkeypatch.setattr(attention, "CPU_WRITTEN_OUT_MAX_LEN", 0)  # the fused kernel
    measured, model = _saved_bytes(cfg, 8)
    formula = sizing.transformer_activation_bytes(cfg, 8)
    n = sum(p.numel() for p in model.parameters())
    assert 0.8 * formula <= measured <= formula + 2 * n, (measured, formula)
    monkeypatch.setattr(attention, "CPU_WRITTEN_OUT_MAX_LEN", 256)  # written out: probabilities kept
    with_probs, _ = _saved_bytes(cfg, 8)
    assert with_probs >= measured + 0.9 * (sizing.transformer_activation_bytes(cfg, 8, scores=True) - formula)


def test_flops_formula_matches_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    # backend "reference": explicit matmuls, which the counter sees (it has no formula for
    # the CPU SDPA kernel, and would miss the attention term)
    cfg = TransformerConfig(text_vocab=100, image_vocab=64, text_len=8, image_grid=4,
                            d_model=64, n_layers=2, n_heads=4, backend="reference")
    model = Transformer(cfg)
    b = 2
    text, image = torch.randint(0, 100, (b, 8)), torch.randint(0, 64, (b, 16))
    with FlopCounterMode(display=False) as fc:
        t, i = model(text, image)
        (t.float().sum() + i.float().sum()).backward()
    per_token = fc.get_total_flops() / (b * cfg.seq_len)
    assert per_token == pytest.approx(sizing.transformer_flops_per_token(cfg), rel=0.02)


def test_paper_shape_parameters():
    n = count_parameters_meta(lambda: Transformer(sizing.paper_prior_config()))
    assert 12.0e9 < n < 12.5e9  # "12-billion parameter" (paper abstract)
    report = sizing.paper_report()
    assert report["parameters"] == n and report["text_vocab"] == 16384 + 256
    assert report["gib_fp32_adam"] == round(16 * n / 2**30, 1)


@pytest.mark.parametrize("name", ["gpu16", "gpu80"])
def test_gpu_preset_fits_its_card(name):
    """Weights + AdamW + activations (worst case: attention probabilities materialised) of
    the transformer, and of the dVAE, below 75% of the card: room for the CUDA context,
    workspaces and fragmentation that the estimate leaves out."""
    p, card = PRESETS[name], sizing.CARD_GIB[name]
    assert p.image_size >= 64 and p.dvae_grid > PRESETS["cpu"].dvae_grid
    assert p.d_model > PRESETS["cpu"].d_model and p.n_layers > PRESETS["cpu"].n_layers
    prior = sizing.transformer_memory(sizing.prior_config_for_preset(p), p.micro_batch,
                                      scores=True)
    dvae = sizing.dvae_memory(sizing.dvae_config_for_preset(p), p.batch_size)
    assert prior.total_gib < 0.75 * card, prior
    assert dvae.total_gib < 0.75 * card, dvae
    assert dvae.activations_gib > 0 and prior.parameters > 10 * 2 ** 20
