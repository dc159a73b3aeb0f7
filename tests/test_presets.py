"""Presets (presets.py): one frozen record per machine class, and the paper's."""
import dataclasses

import pytest

from dalle_mini_impl import presets
from dalle_mini_impl.presets import PAPER, PRESETS, get_preset


def test_choice_by_name_environment_and_device(monkeypatch):
    monkeypatch.delenv(presets.PRESET_ENV, raising=False)
    assert get_preset(device="cpu").name == "cpu"
    monkeypatch.setenv(presets.PRESET_ENV, "gpu16")
    assert get_preset().name == "gpu16"
    assert get_preset("gpu80").name == "gpu80"  # the argument wins over the environment
    monkeypatch.setenv(presets.PRESET_ENV, "huge")
    with pytest.raises(ValueError, match="unknown preset 'huge'.*choose one of"):
        get_preset()


def test_presets_are_frozen_and_grow_with_the_card():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["cpu"].d_model = 1
    cpu, g16, g80 = PRESETS["cpu"], PRESETS["gpu16"], PRESETS["gpu80"]
    assert cpu.image_size < g16.image_size < g80.image_size
    assert cpu.d_model < g16.d_model < g80.d_model and cpu.n_layers < g16.n_layers < g80.n_layers
    assert cpu.micro_batch is None and g16.micro_batch == g80.micro_batch == 64
    for p in PRESETS.values():
        assert p.image_size % p.dvae_grid == 0 and p.d_model % p.n_heads == 0
        assert p.text_vocab == p.bpe_vocab + p.text_len and p.image_len == p.dvae_grid ** 2


def test_the_paper_record():
    """Section 2.2 and appendix B: 256 text tokens from 16,384 BPE ids, 32 x 32 image tokens
    from 8,192 codes, 64 layers of width 3,968 and 62 heads, batch 1,024, lr 4.5e-4, 5,000
    warm-up updates. Not a choosable preset."""
    assert (PAPER.text_len, PAPER.bpe_vocab, PAPER.text_vocab) == (256, 16384, 16384 + 256)
    assert (PAPER.dvae_grid, PAPER.dvae_codes, PAPER.image_size) == (32, 8192, 256)
    assert (PAPER.n_layers, PAPER.d_model, PAPER.n_heads, PAPER.d_model // PAPER.n_heads) == (64, 3968, 62, 64)
    assert (PAPER.batch_size, PAPER.lr, PAPER.warmup) == (1024, 4.5e-4, 5000)
    with pytest.raises(ValueError):
        get_preset("paper")
