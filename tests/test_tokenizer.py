"""CaptionTokenizer: per-position padding, truncation, blanks, unicode, types, save/load, dropout."""
import json
import re
import warnings

import pytest
import torch

from dalle_mini_impl import bpe
from dalle_mini_impl.datasets.shapes import COLOUR_NAMES, SHAPES, SIZES
from dalle_mini_impl.tokenizer import CaptionTokenizer, course_captions, course_tokenizer

UNICODE = ["café crème brûlée", "naïve señor über straße", "日本語のテキスト", "两个孩子在公园里放风筝",
           "고양이가 자고 있다", "🎨🐱🚀 emoji 👩‍👩‍👧", "ΣΟΦΙΑ and σοφία", "مرحبا", "½ ² — «quotes»"]


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer(text_len=24)


@pytest.fixture(scope="module")
def mixed_tok():
    return CaptionTokenizer.train_from_captions(bpe.mixed_language_captions(4000, seed=0), 800, text_len=64)


def test_sizes_and_per_position_padding(tok):
    V = tok.bpe_vocab_size
    assert tok.n_text_tokens == tok.n_text_tokens == V + 24
    ids = tok.encode(["a small red circle on the left", "the digit 7"])
    assert ids.shape == (2, 24) and ids.dtype == torch.long
    n = (ids < V).sum(1)  # real tokens per caption
    assert n.tolist() == [7, 3]  # saturated: one token per word
    for row, k in zip(ids, n):
        assert (row[:k] < V).all()
        assert torch.equal(row[k:], V + torch.arange(k, 24))  # position i holds pad id V + i
    assert torch.equal(tok.pad_ids(), V + torch.arange(24))


def test_course_tokenizer_is_deterministic_and_saturated(tok):
    again = course_tokenizer(text_len=24)
    assert again.hf.get_vocab() == tok.hf.get_vocab()
    words = set(re.findall(r"\w+", " ".join(course_captions())))
    assert {w for w in SHAPES + COLOUR_NAMES + SIZES} <= words
    for w in words:  # every word of the caption language is a single token
        assert len(tok.tokens(w)) == 1, w


def test_blank_captions_are_all_padding(tok):
    ids = tok.encode(["", "   ", "\t\n ", "a circle"])
    assert torch.equal(ids[:3], tok.pad_ids().repeat(3, 1))
    assert (ids[3, :2] < tok.bpe_vocab_size).all()
    assert tok.decode(ids[:3]) == ["", "", ""]


def test_truncation_warns_with_a_count(tok):
    long = " ".join(["a large red circle"] * 10)  # 40 tokens
    with pytest.warns(UserWarning, match=r"2 of 3 captions were longer than text_len=24"):
        ids = tok.encode([long, "a circle", long])
    assert (ids[0] < tok.bpe_vocab_size).all()  # no room left for padding
    assert tok.decode(ids[0])[0] == " ".join(long.split()[:24])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fitting captions: no warning at all
        tok.encode(["a circle"] * 5)
    with pytest.warns(UserWarning, match="1 of 1"):
        assert tok.encode("a large red circle", text_len=3).shape == (1, 3)


def test_text_len_out_of_range(tok):
    with pytest.raises(ValueError, match=r"text_len must be in \[1, 24\]"):
        tok.encode(["a circle"], text_len=25)


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_round_trips(mixed_tok, text):
    ids = mixed_tok.encode([text])
    assert mixed_tok.decode(ids) == [bpe.normalize(text)]


def test_lowercase_and_whitespace_normalisation(tok):
    assert tok.decode(tok.encode(["  A  Large\tRED circle  "])) == ["a large red circle"]
    assert torch.equal(tok.encode(["A Large RED circle"]), tok.encode(["a large red circle"]))


@pytest.mark.parametrize("bad", [None, 3, b"a circle", ["a circle", 7], [None]])
def test_non_strings_raise_type_error(tok, bad):
    with pytest.raises(TypeError, match="str"):
        tok.encode(bad)


def test_decode_drops_padding_and_checks_range(tok):
    ids = tok.encode(["a blue square at the top"])
    assert tok.decode(ids) == ["a blue square at the top"]
    assert tok.decode(ids[0]) == ["a blue square at the top"]  # (T,) works too
    with pytest.raises(ValueError, match="ids must lie in"):
        tok.decode([[tok.n_text_tokens]])


def test_save_load_round_trip(tok, tmp_path):
    tok.dropout = 0.0
    path = tok.save(tmp_path / "tok.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["config"]["text_len"] == 24 and "model" in data["tokenizer"]
    back = CaptionTokenizer.load(path)
    caps = course_captions()[::50] + UNICODE + [""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some unicode captions are byte-long for this small vocab
        assert torch.equal(back.encode(caps), tok.encode(caps))
        assert back.decode(back.encode(caps)) == tok.decode(tok.encode(caps))
    assert back.n_text_tokens == tok.n_text_tokens and back.text_len == 24
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a CaptionTokenizer file"):
        CaptionTokenizer.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        CaptionTokenizer.load(tmp_path / "missing.json")


def test_dropout_switch(mixed_tok):
    caps = [c for c in bpe.mixed_language_captions(400, seed=3) if len(c.encode("utf-8")) < 63]  # fit even as bytes
    mixed_tok.dropout = 0.0
    plain = mixed_tok.encode(caps)
    mixed_tok.dropout = 1e-12  # our BPE path, practically no dropout: the library's ids exactly
    assert torch.equal(mixed_tok.encode(caps), plain)
    mixed_tok.dropout = 0.1
    mixed_tok.seed(0)
    a = mixed_tok.encode(caps)
    mixed_tok.seed(0)
    assert torch.equal(mixed_tok.encode(caps), a)  # seeded: reproducible
    b = mixed_tok.encode(caps)
    assert not torch.equal(a, b) and not torch.equal(a, plain)  # new draws, new segmentations
    real = lambda t: (t < mixed_tok.bpe_vocab_size).sum()
    assert real(a) > real(plain)  # dropout splits words into more, shorter tokens
    assert mixed_tok.decode(a) == mixed_tok.decode(plain) == [bpe.normalize(c) for c in caps]
    repeated = mixed_tok.encode(["two children fly a yellow kite on a windy beach"] * 30)
    assert len({tuple(r.tolist()) for r in repeated}) > 1  # each occurrence draws its own dropout
    mixed_tok.dropout = 0.0
    with pytest.raises(ValueError, match="dropout"):
        mixed_tok.dropout = 1.0


def test_train_from_captions_equals_our_bpe():
    caps = bpe.mixed_language_captions(3000, seed=0)  # single-spaced, stripped: both normalisers agree
    tok = CaptionTokenizer.train_from_captions(caps, 600, text_len=8)
    ours = bpe.train(caps, 600)
    assert tok.hf.get_vocab() == ours.vocab
    assert [tuple(m) for m in json.loads(tok.hf.to_str())["model"]["merges"]] == ours.merges
    with pytest.raises(ValueError, match="at least 256"):
        CaptionTokenizer.train_from_captions(caps, 100)
