"""``bpe``: byte-level byte-pair encoding, from scratch (paper section 2.2).

DALL-E reads a caption as at most 256 lowercase BPE tokens from a vocabulary of 16,384,
with BPE dropout 0.1 during training (Ramesh et al. 2021, section 2.2 and appendix).
This module builds that tokenizer by hand, rule for rule the way Hugging Face
``tokenizers`` (0.23) trains and applies its byte-level BPE, so that lesson 05 can show
the two learn the same merges in the same order and give the same ids. The package's
``tokenizer.CaptionTokenizer`` then uses the library.

Training (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
Units"), as ``tokenizers.trainers.BpeTrainer`` does it:

1. normalise: lowercase, one character at a time (Rust's ``char::to_lowercase``: a
   capital sigma always becomes ``σ``, never the word-final ``ς`` of ``str.lower``);
2. pre-tokenise: prefix a space, split with the GPT-2 regex (:data:`GPT2_PATTERN`), map
   every UTF-8 byte of a piece to one of 256 printable characters (:func:`bytes_to_unicode`,
   Radford et al. 2019), so any text, emoji included, is a string over 256 symbols;
3. alphabet: the 256 byte characters, ids 0..255 in order of code point;
4. count the words; a pair's count is the sum, over words, of word frequency times
   occurrences in the word:  c(a, b) = sum_w f(w) * n_w(a, b);
5. merge the most frequent pair into a new token, id = next free id. **Ties** go to the
   smallest pair of ids (left id, then right id). Only the words containing the pair are
   touched, and only the counts of pairs next to a merge change (incremental update with
   a lazy max-heap, never a full recount);
6. stop when the vocabulary has ``vocab_size`` tokens, or no pair has a count of at least
   ``max(1, min_frequency)``.

Encoding a word applies the learned merges lowest rank first (leftmost on ties). BPE
dropout (Provilkov et al. 2020) skips each candidate merge with probability p, so one word
gets several segmentations during training; unlike ``tokenizers`` (an unseeded thread
RNG), the dropout here draws from a seeded ``random.Random``, so it is reproducible.
"""
from __future__ import annotations

import functools
import heapq
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

from .utils import data_dir

# GPT-2's pre-tokenisation regex, the one ``tokenizers.pre_tokenizers.ByteLevel`` uses.
# Python's ``re`` has no \p{L} / \p{N}: :func:`_gpt2_regex` spells them out as classes.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass
class BPEConfig:
    """How to train. The defaults are the ones ``tokenizers``' byte-level BPE uses."""
    vocab_size: int = 1000         # tokens in the final vocabulary, the 256 bytes included
    min_frequency: int = 0         # a pair must occur at least this often to be merged
    lowercase: bool = True         # DALL-E lowercases captions
    add_prefix_space: bool = True  # "cat" and "a cat" then share the token "Ġcat"


# --------------------------------------------------------------------------- bytes
@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to 256 printable characters.

    Printable Latin-1 bytes stand for themselves; the other 68 (control characters, the
    space, ...) are shifted to code points 256.. in order, so the space byte is ``Ġ``."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@functools.lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _char_class(codepoints: list[int]) -> str:
    """A regex character-class body for a sorted list of code points, as ranges."""
    parts, start = [], None
    for i, cp in enumerate(codepoints):
        if start is None:
            start = cp
        if i + 1 == len(codepoints) or codepoints[i + 1] != cp + 1:
            parts.append(f"\\U{start:08x}" if start == cp else f"\\U{start:08x}-\\U{cp:08x}")
            start = None
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _gpt2_regex() -> re.Pattern:
    """:data:`GPT2_PATTERN` for Python's ``re``: \\p{L} (letters) and \\p{N} (numbers) are
    built once from ``unicodedata`` (about 0.3 s)."""
    letters, numbers = [], []
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))[0]
        if cat == "L":
            letters.append(cp)
        elif cat == "N":
            numbers.append(cp)
    L, N = _char_class(letters), _char_class(numbers)
    pattern = (GPT2_PATTERN.replace(r"[^\s\p{L}\p{N}]", f"[^\\s{L}{N}]")
               .replace(r"\p{L}", f"[{L}]").replace(r"\p{N}", f"[{N}]"))
    return re.compile(pattern)


def normalize(text: str, lowercase: bool = True) -> str:
    """Lowercase one character at a time, as ``tokenizers.normalizers.Lowercase`` does."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}: {text!r:.60}")
    if not lowercase:
        return text
    # str.lower() only differs from per-character lowering by the final-sigma rule
    return "".join(c.lower() for c in text) if "Σ" in text else text.lower()


def pre_tokenize(text: str, add_prefix_space: bool = True) -> list[str]:
    """Split a (normalised) text into byte-level words: ``"a red cat!"`` ->
    ``['Ġa', 'Ġred', 'Ġcat', '!']``."""
    if add_prefix_space and text and not text.startswith(" "):  # "" stays empty, as in tokenizers
        text = " " + text
    enc = bytes_to_unicode()
    return ["".join(enc[b] for b in piece.encode("utf-8")) for piece in _gpt2_regex().findall(text)]


def count_words(corpus: Iterable[str], lowercase: bool = True, add_prefix_space: bool = True) -> Counter:
    """How often each byte-level word occurs in the corpus (identical texts split once)."""
    texts = Counter(corpus)
    words: Counter = Counter()
    for text, n in texts.items():
        for w in pre_tokenize(normalize(text, lowercase), add_prefix_space):
            words[w] += n
    return words


# --------------------------------------------------------------------------- training
def _merge_in_word(word: list[int], a: int, b: int, new: int) -> list[tuple[tuple[int, int], int]]:
    """Replace every (a, b) in ``word`` by ``new``, left to right, in place; return the
    pair-count changes: the pairs next to each merge lose one, the new pairs gain one."""
    changes = []
    i = 0
    while i < len(word) - 1:
        if word[i] == a and word[i + 1] == b:
            if i > 0:
                changes += [((word[i - 1], a), -1), ((word[i - 1], new), 1)]
            word[i:i + 2] = [new]
            if i < len(word) - 1:
                changes += [((b, word[i + 1]), -1), ((new, word[i + 1]), 1)]
        i += 1
    return changes


def train(corpus: Iterable[str], vocab_size: int, min_frequency: int = 0, lowercase: bool = True,
          add_prefix_space: bool = True, tie_break: str = "ids") -> "BPE":
    """Learn byte-level BPE merges from ``corpus`` (an iterable of texts) until the
    vocabulary has ``vocab_size`` tokens (the 256 bytes included).

    The count of a pair is c(a, b) = sum over words w of f(w) * n_w(a, b). Each step
    merges argmax c; equal counts go to the smallest (id_a, id_b). The heap is lazy: an
    entry whose count went stale is pushed back with the true count; after a merge only
    the pairs it created are pushed, each with the words it was created in.

    ``tie_break="ids"`` is the rule of ``tokenizers``; ``"strings"`` (smallest
    (string_a, string_b)) exists to show that the rule matters: it learns other merges.
    """
    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of texts, not one str: wrap it in a list")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the byte alphabet), got {vocab_size}")
    if tie_break not in ("ids", "strings"):
        raise ValueError(f"tie_break must be 'ids' (as tokenizers) or 'strings', got {tie_break!r}")
    alphabet = sorted(bytes_to_unicode().values())  # ids by code point, as tokenizers does
    vocab = {c: i for i, c in enumerate(alphabet)}
    id_to_token = list(alphabet)

    word_counts = count_words(corpus, lowercase, add_prefix_space)
    words = [[vocab[c] for c in w] for w in word_counts]  # each word as a list of token ids
    counts = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words it occurs in
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += counts[i]
            where[pair].add(i)
    # max-heap by count as a min-heap of (-count, key, ...): ties pop the smallest key first
    key = (lambda p: p) if tie_break == "ids" else (lambda p: (id_to_token[p[0]], id_to_token[p[1]]))
    heap = [(-pair_counts[p], key(p), k, p, pos) for k, (p, pos) in enumerate(where.items())]
    heapq.heapify(heap)
    serial = len(heap)  # unique tie-breaker so tuples never compare the sets

    merges: list[tuple[int, int]] = []
    while len(vocab) < vocab_size and heap:
        neg, kp, k, pair, pos = heapq.heappop(heap)
        count = pair_counts[pair]
        if -neg != count:  # stale entry: put it back with its true count
            heapq.heappush(heap, (-count, kp, k, pair, pos))
            continue
        if count < max(1, min_frequency):
            break
        token = id_to_token[pair[0]] + id_to_token[pair[1]]
        if token not in vocab:  # two merges can spell the same string: reuse its id
            vocab[token] = len(id_to_token)
            id_to_token.append(token)
        new = vocab[token]
        merges.append(pair)

        created: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i in pos:
            for p, delta in _merge_in_word(words[i], pair[0], pair[1], new):
                pair_counts[p] += delta * counts[i]
                if delta > 0:
                    created[p].add(i)
        for p, ws in created.items():
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], key(p), serial, p, ws))
                serial += 1
    return BPE(vocab, [(id_to_token[a], id_to_token[b]) for a, b in merges],
               BPEConfig(vocab_size, min_frequency, lowercase, add_prefix_space))


# --------------------------------------------------------------------------- the model
class BPE:
    """A trained byte-level BPE: ``vocab`` (token string -> id) and ``merges`` (pairs of
    token strings, in the order they were learned = their rank)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], config: BPEConfig | None = None):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.config = config or BPEConfig(vocab_size=len(vocab))
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        missing = [c for c in bytes_to_unicode().values() if c not in self.vocab]
        if missing:
            raise ValueError(f"vocab lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}): "
                             "a byte-level BPE must contain them all")
        # (left id, right id) -> (rank, merged id); a later duplicate overrides, as in tokenizers
        self.ranks = {(self.vocab[a], self.vocab[b]): (r, self.vocab[a + b]) for r, (a, b) in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def merge_table(self, n: int | None = None) -> list[str]:
        """The first ``n`` merges as readable lines: ``rank: a + b -> ab``."""
        return [f"{r:4d}: {a!r:>10} + {b!r:<10} -> {a + b!r}"
                for r, (a, b) in enumerate(self.merges[:n])]

    def encode_word(self, word: str, dropout: float = 0.0, rng: random.Random | None = None) -> list[int]:
        """Token ids of one byte-level word.

        Applies merges lowest rank first, leftmost on ties (a heap of (rank, position)).
        With ``dropout`` p > 0 each popped merge is skipped with probability p; the
        skipped ones come back after the next merge that happens (tokenizers' rule).
        """
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if dropout == 0.0 and word in self._cache:
            return list(self._cache[word])
        rng = rng or random.Random(0)
        sym = [self.vocab[c] for c in word]
        n = len(sym)
        if n == 0:
            return []
        nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        nxt[-1] = -1
        ranks = self.ranks
        heap = [(ranks[p][0], i, ranks[p][1]) for i, p in enumerate(zip(sym, sym[1:])) if p in ranks]
        heapq.heapify(heap)
        skipped = []
        while heap:
            top = heapq.heappop(heap)
            if dropout and rng.random() < dropout:
                skipped.append(top)
                continue
            for s in skipped:
                heapq.heappush(heap, s)
            skipped.clear()
            _, pos, new = top
            if not alive[pos] or nxt[pos] == -1:
                continue
            right = nxt[pos]
            m = ranks.get((sym[pos], sym[right]))
            if m is None or m[1] != new:  # the pair here changed since this entry was pushed
                continue
            sym[pos], alive[right], nxt[pos] = new, False, nxt[right]
            if nxt[pos] != -1:
                prv[nxt[pos]] = pos
            if prv[pos] != -1 and (m := ranks.get((sym[prv[pos]], new))):
                heapq.heappush(heap, (m[0], prv[pos], m[1]))
            if nxt[pos] != -1 and (m := ranks.get((new, sym[nxt[pos]]))):
                heapq.heappush(heap, (m[0], pos, m[1]))
        out = [s for s, a in zip(sym, alive) if a]
        if dropout == 0.0:
            self._cache[word] = out
        return list(out)

    def encode(self, text: str, dropout: float = 0.0, rng: random.Random | None = None) -> list[int]:
        """Token ids of a text: normalise, pre-tokenise, BPE each word."""
        words = pre_tokenize(normalize(text, self.config.lowercase), self.config.add_prefix_space)
        return [i for w in words for i in self.encode_word(w, dropout, rng)]

    def tokens(self, text: str, dropout: float = 0.0, rng: random.Random | None = None) -> list[str]:
        return [self.id_to_token[i] for i in self.encode(text, dropout, rng)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text: token strings -> bytes -> UTF-8 (bad byte runs become U+FFFD)."""
        dec = unicode_to_bytes()
        try:
            data = bytes(dec[c] for i in ids for c in self.id_to_token[int(i)])
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in this vocabulary of {len(self)}") from None
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"vocab": self.vocab, "merges": self.merges}, ensure_ascii=False)

    @classmethod
    def from_tokenizers_json(cls, data: dict | str, lowercase: bool = True, add_prefix_space: bool = True) -> "BPE":
        """Build from a ``tokenizers`` JSON (``Tokenizer.to_str()``): its ``model`` holds
        ``vocab`` and ``merges`` (``[a, b]`` lists, or ``"a b"`` strings in old files)."""
        data = json.loads(data) if isinstance(data, str) else data
        model = data["model"]
        merges = [tuple(m) if isinstance(m, (list, tuple)) else tuple(m.split(" ")) for m in model["merges"]]
        return cls(model["vocab"], merges, BPEConfig(len(model["vocab"]), 0, lowercase, add_prefix_space))


# --------------------------------------------------------------------------- corpora
def mixed_language_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions cut and mixed from ``data/mixed_language_corpus.txt`` (83 captions in
    20 languages, with accents, CJK, emoji, digits and punctuation), deterministic from
    ``seed``: each is a span of 3-12 words of one line (characters for scripts written
    without spaces), and every third one adds a span of a second line, often in another
    language. A varied corpus on which a 1,000-token vocabulary does not saturate."""
    path = data_dir() / "mixed_language_corpus.txt"
    lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()
             if l.strip() and not l.startswith("#")]
    units = [(l.split(), " ") if " " in l else (list(l), "") for l in lines]
    rng = random.Random(seed)

    def span() -> str:
        parts, sep = units[rng.randrange(len(units))]
        k = rng.randint(3, 12)
        start = rng.randrange(max(1, len(parts) - k + 1))
        return sep.join(parts[start:start + k])

    return [span() + (" " + span() if rng.random() < 1 / 3 else "") for _ in range(n)]
