"""Our from-scratch BPE (dalle_mini_impl.bpe) against Hugging Face tokenizers' BpeTrainer."""
import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from dalle_mini_impl import bpe
from dalle_mini_impl.datasets import DigitsDataset, ShapesDataset


def hf_train(corpus, vocab_size):
    """tokenizers configured exactly as bpe.train: Lowercase, ByteLevel(add_prefix_space),
    the 256-byte initial alphabet, min_frequency 0, no special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=0, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    return tok, model["vocab"], [tuple(m) for m in model["merges"]]


def common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.fixture(scope="module")
def course():
    train = ShapesDataset(5000, image_size=16, seed=0, n_objects=(1, 2)).captions + DigitsDataset("all").captions
    held = ShapesDataset(10_000, image_size=16, seed=1, split="all", n_objects=(1, 2)).captions
    return train, held


@pytest.fixture(scope="module")
def mixed():
    return bpe.mixed_language_captions(20_000, seed=0), bpe.mixed_language_captions(10_000, seed=1)


def test_byte_alphabet_is_the_librarys():
    table = bpe.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("a")] == "a"


TRICKY = ["Hello my friend, how is it going?", "  two  spaces\tand a tab\nnew line  ", "don't it's we'll I'd",
          "A 4K photo: 3½ apples, ²⁄₃ full!!!", "Café naïve ÉCOLE", "日本語のテキスト 🎨🐱‍👤", "ΟΔΟΣ ΣΟΦΙΑΣ",
          "   ", "", "x", "...", "1,80 m — 75 kg", "مرحبا بالعالم", "नमस्ते दुनिया"]


@pytest.mark.parametrize("text", TRICKY)
def test_normalize_and_pre_tokenize_match_library(text):
    norm = normalizers.Lowercase().normalize_str(text)
    assert bpe.normalize(text) == norm  # capital sigma -> σ, never the final ς
    expected = [w for w, _ in pre_tokenizers.ByteLevel(add_prefix_space=True).pre_tokenize_str(norm)]
    assert bpe.pre_tokenize(norm) == expected


def test_parity_on_course_captions(course):
    train, held = course
    ours = bpe.train(train, 1000)
    hf, vocab, merges = hf_train(train, 1000)
    # the template language saturates: every word becomes one token before 1,000
    assert len(ours) < 1000 and len(ours.merges) >= 140
    assert ours.merges == merges  # every merge, in order
    assert ours.vocab == vocab
    assert [ours.encode(c) for c in held] == [e.ids for e in hf.encode_batch(held)]


def test_parity_on_mixed_language_text(mixed):
    train, held = mixed
    ours = bpe.train(train, 1000)
    hf, vocab, merges = hf_train(train, 1000)
    assert len(merges) == 744 and ours.merges == merges and ours.vocab == vocab
    ids = [ours.encode(c) for c in held]
    assert ids == [e.ids for e in hf.encode_batch(held)]
    assert all(ours.decode(i) == " " + bpe.normalize(c) for i, c in zip(ids[:2000], held))


def test_parity_on_adversarial_repetitions():
    """Long runs over a two-letter alphabet: many ties, overlapping pairs (aaa), deep merges."""
    rng = random.Random(0)
    corpus = [" ".join("".join(rng.choice("aab") for _ in range(rng.randint(2, 25)))
                       for _ in range(rng.randint(1, 3))) for _ in range(300)]
    ours = bpe.train(corpus, 800)
    hf, vocab, merges = hf_train(corpus, 800)
    assert len(merges) == 544 and ours.merges == merges
    assert [ours.encode(c) for c in corpus] == [e.ids for e in hf.encode_batch(corpus)]


def test_tie_breaking_rule_matters(course):
    """Breaking ties by string order instead of by ids learns a different merge table early."""
    train, _ = course
    _, _, merges = hf_train(train, 1000)
    by_strings = bpe.train(train, 1000, tie_break="strings")
    assert common_prefix(by_strings.merges, merges) < 20


def test_min_frequency_and_small_vocab():
    corpus = ["low lower lowest", "new newer newest", "wide wider widest"] * 3 + ["zebra"]
    ours = bpe.train(corpus, 300, min_frequency=3)
    _, _, merges = hf_train(corpus, 300)  # no min_frequency: merges more
    assert ours.merges == merges[:len(ours.merges)] and len(ours.merges) < len(merges)
    assert bpe.train(corpus, 256).merges == []


def test_dropout_changes_segmentation_but_never_the_text():
    model = bpe.train(bpe.mixed_language_captions(3000, seed=0), 600)
    text = "a red fox jumps over the sleeping dog, le café ☕ 猫"
    plain = model.encode(text)
    assert model.encode(text, dropout=0.0) == plain
    segs = {tuple(model.encode(text, 0.3, random.Random(s))) for s in range(20)}
    assert len(segs) > 5 and any(s != tuple(plain) for s in segs)
    assert all(model.decode(s) == " " + text for s in segs)
    assert all(len(s) >= len(plain) for s in segs)  # skipping merges never shortens
    assert model.encode(text, 0.3, random.Random(7)) == model.encode(text, 0.3, random.Random(7))
    assert len(model.encode(text, 1.0)) == len((" " + text).encode("utf-8"))  # p = 1: bytes only


def test_unicode_round_trip():
    model = bpe.train(bpe.mixed_language_captions(2000, seed=0), 500)
    for text in TRICKY:
        prefix = " " if text and not text.startswith(" ") else ""  # the prefix space comes back
        assert model.decode(model.encode(text)) == prefix + bpe.normalize(text)


def test_bad_input():
    with pytest.raises(TypeError, match="not one str"):
        bpe.train("a single string", 300)
    with pytest.raises(ValueError, match="at least 256"):
        bpe.train(["x"], 100)
    with pytest.raises(TypeError, match="expected a str"):
        bpe.train(["ok", 3], 300)
    model = bpe.train(["abc"], 300)
    with pytest.raises(ValueError, match="not in this vocabulary"):
        model.decode([10_000])
    with pytest.raises(ValueError, match="dropout"):
        model.encode("abc", dropout=1.5)
