"""Tests of dalle_mini_impl.dvae_openai: OpenAI's released dVAE (``pip install --no-deps DALL-E``)
converted into ours gives the same outputs."""
import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl.dvae import DVAEConfig
from dalle_mini_impl.dvae_openai import from_openai
from dalle_mini_impl.utils import count_parameters


def test_paper_config_matches_openai_dvae():
    """Random-init OpenAI modules -> converter -> same outputs (max abs diff < 1e-4)."""
    dall_e = pytest.importorskip("dall_e", reason="pip install --no-deps DALL-E")
    torch.manual_seed(0)
    enc, dec = dall_e.Encoder(), dall_e.Decoder()
    model = from_openai(enc, dec)
    assert model.config == DVAEConfig.paper()
    assert count_parameters(enc) == 53_786_240 and count_parameters(dec) == 43_829_766
    # ours: the decoder's input conv became the codebook, its bias folded into the rows
    assert count_parameters(model.encoder) == count_parameters(enc)
    assert count_parameters(model.decoder) + count_parameters(model.codebook) == count_parameters(dec) - 128
    x = torch.rand(2, 3, 16, 16)  # the convs are resolution-agnostic: 16 -> 2x2 tokens keeps it fast
    with torch.no_grad():
        theirs = enc(dall_e.map_pixels(x))
        ours = model.logits(x)
        assert (theirs - ours).abs().max() < 1e-4
        assert torch.equal(model.encode(x), theirs.argmax(1))
        ids = torch.randint(0, 8192, (2, 2, 2))
        onehot = F.one_hot(ids, 8192).permute(0, 3, 1, 2).float()
        stats = dec(onehot)
        assert (stats - model.decode_stats(ids)).abs().max() < 1e-4
        rec = dall_e.unmap_pixels(torch.sigmoid(stats[:, :3]))
        assert (rec - model.decode(ids)).abs().max() < 1e-4


def test_from_openai_accepts_pickled_files(tmp_path):
    dall_e = pytest.importorskip("dall_e", reason="pip install --no-deps DALL-E")
    torch.manual_seed(1)
    enc = dall_e.Encoder(n_hid=64, vocab_size=512)
    dec = dall_e.Decoder(n_hid=64, n_init=32, vocab_size=512)
    torch.save(enc, tmp_path / "encoder.pkl")  # the released files are pickled modules
    torch.save(dec, tmp_path / "decoder.pkl")
    with pytest.raises(ValueError, match="trust_pickle=True"):
        from_openai(str(tmp_path / "encoder.pkl"), str(tmp_path / "decoder.pkl"))
    model = from_openai(str(tmp_path / "encoder.pkl"), str(tmp_path / "decoder.pkl"), trust_pickle=True)
    assert model.config.n_codes == 512 and model.config.codebook_dim == 32 and model.config.n_hid == 64
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (enc(dall_e.map_pixels(x)) - model.logits(x)).abs().max() < 1e-4
    with pytest.raises(TypeError, match="OpenAI"):
        from_openai(3, 4)
