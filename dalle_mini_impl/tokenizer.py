"""``tokenizer``: the caption tokenizer DALL-E uses, built on Hugging Face ``tokenizers``
(paper section 2.2).

The paper lowercases a caption and encodes it with BPE (vocabulary 16,384, BPE dropout 0.1
while training, Provilkov et al. 2020) into at most 256 tokens; a shorter caption leaves
text positions empty, and each position has its own padding token (Ramesh et al. 2021, 2.2 and
B.2). Here:

* BPE: byte-level, lowercase (``tokenizers``: normalizer Strip + collapse whitespace +
  Lowercase; pre-tokenizer ``ByteLevel(add_prefix_space=True)``; ``BpeTrainer`` with the
  256-byte initial alphabet). Lesson 05 shows it learns the same merges as ``bpe.train``.
* Ids ``0 .. bpe_vocab_size - 1`` are BPE tokens; the padding at text position ``i`` is
  id ``bpe_vocab_size + i``. The text embedding table therefore needs
  ``n_text_tokens = bpe_vocab_size + text_len`` rows.
* Captions longer than ``text_len`` tokens are truncated, with one warning per call that
  counts them (training data); empty and whitespace-only captions encode to all padding.
  ``encode(..., strict=True)`` (what generation uses: a user typed the caption) raises a
  ValueError for either instead. Non-strings raise TypeError.
* Dropout (training only): with ``dropout = p > 0`` each word is re-segmented by
  ``bpe.BPE.encode_word`` with the same merges, skipping each merge with probability p,
  drawn from a seeded RNG, so runs are reproducible (``tokenizers``' own dropout uses an
  unseeded thread RNG). With ``dropout = 0`` the ids are the library's, exactly.
* ``save(path)`` writes one JSON file: the ``tokenizers`` JSON plus ``text_len``.
"""
from __future__ import annotations

import json
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import bpe
from .datasets import course_captions

FORMAT = "dalle_mini_impl.CaptionTokenizer/1"


@dataclass
class TokenizerConfig:
    text_len: int = 32       # text positions; DALL-E uses 256
    dropout: float = 0.0     # BPE dropout while training; DALL-E uses 0.1
    seed: int = 0            # seeds the dropout RNG


def _hf_tokenizer(lowercase: bool = True):
    """An untrained byte-level BPE ``tokenizers.Tokenizer`` configured the DALL-E way."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    steps = [normalizers.Strip(), normalizers.Replace(Regex(r"\s+"), " ")]
    tok.normalizer = normalizers.Sequence(steps + ([normalizers.Lowercase()] if lowercase else []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _check_captions(captions) -> list[str]:
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, (list, tuple)):
        try:
            captions = list(captions)
        except TypeError:
            raise TypeError(f"captions must be a str or a list of str, got {type(captions).__name__}") from None
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption {i} is a {type(c).__name__} ({c!r:.40}), not a str: "
                            "pass text, e.g. str(x) or bytes.decode('utf-8')")
    return list(captions)


class CaptionTokenizer:
    """Byte-level BPE captions -> (B, text_len) ids with per-position padding.

    Build one with :meth:`train_from_captions` (or :func:`course_tokenizer`), or
    :meth:`load` a saved one. ``encode`` -> LongTensor (B, text_len); ``decode`` -> list[str].
    """

    def __init__(self, hf_tokenizer, config: TokenizerConfig | None = None):
        self.hf = hf_tokenizer
        self.config = config or TokenizerConfig()
        if self.config.text_len < 1:
            raise ValueError(f"text_len must be at least 1, got {self.config.text_len}")
        self.dropout = self.config.dropout  # setter checks the range
        self.rng = random.Random(self.config.seed)
        self._bpe: bpe.BPE | None = None  # our BPE with the same merges, built on first dropout use

    # ------------------------------------------------------------------ sizes
    @property
    def text_len(self) -> int:
        return self.config.text_len

    @property
    def bpe_vocab_size(self) -> int:
        """BPE tokens learned (at most the requested vocabulary: a small corpus saturates)."""
        return self.hf.get_vocab_size()

    @property
    def n_text_tokens(self) -> int:
        """Rows of the text embedding table: BPE tokens + one padding token per position."""
        return self.bpe_vocab_size + self.text_len

    def pad_ids(self, text_len: int | None = None) -> torch.Tensor:
        """(text_len,) the padding id of each position: bpe_vocab_size + i."""
        return self.bpe_vocab_size + torch.arange(text_len or self.text_len)

    # ------------------------------------------------------------------ dropout
    @property
    def dropout(self) -> float:
        return self._dropout

    @dropout.setter
    def dropout(self, p: float) -> None:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}; DALL-E trains with 0.1, evaluates with 0")
        self._dropout = float(p)

    def seed(self, seed: int) -> None:
        """Restart the dropout RNG: the same seed gives the same segmentations."""
        self.rng = random.Random(seed)

    # ------------------------------------------------------------------ training / io
    @classmethod
    def train_from_captions(cls, captions: Iterable[str], bpe_vocab_size: int = 512, text_len: int = 32,
                            dropout: float = 0.0, min_frequency: int = 0, lowercase: bool = True,
                            seed: int = 0) -> "CaptionTokenizer":
        """Train the byte-level BPE on captions (offline) and wrap it.

        ``bpe_vocab_size`` is the BPE vocabulary asked for (DALL-E: 16,384; the 256 bytes
        included; a small corpus saturates below it); the embedding table then needs
        ``tok.n_text_tokens = tok.bpe_vocab_size + text_len`` rows."""
        from tokenizers import pre_tokenizers, trainers

        captions = _check_captions(captions)
        if bpe_vocab_size < 256:
            raise ValueError(f"bpe_vocab_size must be at least 256 (the byte alphabet), got {bpe_vocab_size}")
        tok = _hf_tokenizer(lowercase)
        trainer = trainers.BpeTrainer(vocab_size=bpe_vocab_size, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        tok.train_from_iterator(captions, trainer)
        return cls(tok, TokenizerConfig(text_len, dropout, seed))

    def save(self, path: str | Path) -> Path:
        """One JSON file: the ``tokenizers`` JSON and our config."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "config": asdict(self.config) | {"dropout": self.dropout},
                "tokenizer": json.loads(self.hf.to_str())}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CaptionTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}; make one with CaptionTokenizer.save(path)")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a CaptionTokenizer file (format {data.get('format')!r}, "
                             f"expected {FORMAT!r})")
        return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), TokenizerConfig(**data["config"]))

    # ------------------------------------------------------------------ encode / decode
    def _bpe_ids(self, captions: list[str]) -> list[list[int]]:
        """Token ids of each caption (no padding, no truncation). Repeated captions are
        normalised and split once; with dropout each occurrence still gets its own draws."""
        unique = list(dict.fromkeys(captions))
        if self.dropout == 0.0:
            ids = dict(zip(unique, (e.ids for e in self.hf.encode_batch(unique))))
            return [ids[c] for c in captions]
        if self._bpe is None:
            self._bpe = bpe.BPE.from_tokenizers_json(self.hf.to_str())
        # the library normalises and splits into byte-level words; our BPE merges with dropout
        words = {c: [w for w, _ in self.hf.pre_tokenizer.pre_tokenize_str(self.hf.normalizer.normalize_str(c))]
                 for c in unique}
        return [[i for w in words[c] for i in self._bpe.encode_word(w, self.dropout, self.rng)] for c in captions]

    def encode(self, captions: str | Sequence[str], text_len: int | None = None,
               strict: bool = False) -> torch.Tensor:
        """Captions -> (B, text_len) LongTensor; position i of a short caption holds pad id
        bpe_vocab_size + i. Longer captions are cut to text_len, with a warning; with
        ``strict`` an empty list, an empty caption or a too-long one raises a ValueError that
        says which caption and what to do."""
        captions = _check_captions(captions)
        if strict and not captions:
            raise ValueError("no captions given: pass at least one caption")
        text_len = self.text_len if text_len is None else int(text_len)
        if not 1 <= text_len <= self.text_len:
            raise ValueError(f"text_len must be in [1, {self.text_len}] (this tokenizer has {self.text_len} "
                             f"padding ids), got {text_len}")
        blank = [not c.strip() for c in captions]  # empty or whitespace-only: all padding
        it = iter(self._bpe_ids([c for c, b in zip(captions, blank) if not b]))
        seqs = [[] if b else next(it) for b in blank]
        if strict:
            for i, (c, b, s) in enumerate(zip(captions, blank, seqs)):
                if b:
                    raise ValueError(f"caption {i} is empty: describe the image, e.g. "
                                     "'a small red circle on the left'")
                unknown = self.unknown_words(c)
                why = (f" Its words {', '.join(map(repr, unknown[:5]))} are not in this model's vocabulary, so BPE "
                       "spells them out in pieces and the model never learnt them: use words it was trained "
                       "on." if unknown else "")
                if len(s) > text_len:
                    raise ValueError(f"caption {i} is {len(s)} tokens long; this model reads at most "
                                     f"{text_len}.{why} Shorten it: {c!r:.80}")
                if unknown or not any(ch.isalnum() for ch in c):
                    warnings.warn(f"caption {i} ({c!r:.60}) has words this model never saw "
                                  f"({', '.join(map(repr, unknown[:5])) or 'no words at all'}): the image "
                                  "will not follow them", stacklevel=2)
        too_long = sum(len(s) > text_len for s in seqs)
        pad = list(range(self.bpe_vocab_size, self.bpe_vocab_size + text_len))
        out = torch.tensor([s[:text_len] + pad[len(s):] for s in seqs], dtype=torch.long)  # (B, T)
        out = out.reshape(len(captions), text_len)
        if too_long:
            warnings.warn(f"{too_long} of {len(captions)} captions were longer than text_len={text_len} "
                          "tokens and were truncated", stacklevel=2)
        return out

    def decode(self, ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> list[str]:
        """(B, T) or (T,) ids -> B captions (padding dropped, normalised text)."""
        t = torch.as_tensor(ids, dtype=torch.long)
        if t.dim() == 1:
            t = t[None]  # (1, T)
        if t.dim() != 2:
            raise ValueError(f"ids must be (B, T) or (T,), got shape {tuple(t.shape)}")
        if (t < 0).any() or (t >= self.n_text_tokens).any():
            raise ValueError(f"ids must lie in [0, {self.n_text_tokens}); got range "
                             f"[{int(t.min())}, {int(t.max())}]")
        rows = [[i for i in row if i < self.bpe_vocab_size] for row in t.tolist()]
        return [s[1:] if s.startswith(" ") else s for s in self.hf.decode_batch(rows)]

    def unknown_words(self, caption: str) -> list[str]:
        """The words of ``caption`` that are not whole tokens of the vocabulary (BPE spells them
        in pieces: for a tokenizer trained on a small caption language, words it never saw)."""
        vocab = self.hf.get_vocab()
        text = self.hf.normalizer.normalize_str(caption)
        words = [w for w, _ in self.hf.pre_tokenizer.pre_tokenize_str(text)]
        return [self.hf.decoder.decode([w]).strip() for w in words
                if w not in vocab and any(ch.isalnum() for ch in self.hf.decoder.decode([w]))]

    def tokens(self, caption: str) -> list[str]:
        """The token strings of one caption (readable, ``Ġ`` marks a space)."""
        return [self.hf.id_to_token(int(i)) for i in self._bpe_ids(_check_captions([caption]))[0]]

    def __repr__(self) -> str:
        return (f"CaptionTokenizer(bpe_vocab_size={self.bpe_vocab_size}, text_len={self.text_len}, "
                f"n_text_tokens={self.n_text_tokens}, dropout={self.dropout})")


def course_tokenizer(text_len: int = 32, bpe_vocab_size: int = 512, dropout: float = 0.0) -> CaptionTokenizer:
    """The course's tokenizer for shapes and digits captions, trained from scratch in well
    under a second, the same every time. The caption language has a few dozen words, so
    BPE saturates (every word one token) below ``bpe_vocab_size=512``. ``text_len``: text
    positions (the presets' ``text_len``: 32 on CPU, 64 and 128 on the GPU presets)."""
    return CaptionTokenizer.train_from_captions(course_captions(), bpe_vocab_size, text_len, dropout)
