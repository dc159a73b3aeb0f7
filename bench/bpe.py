"""Lesson 05 benchmark: our from-scratch BPE trainer vs tokenizers' BpeTrainer.

    python bench/bpe.py

Prints, for 20,000 captions and a 1,000-token vocabulary: the training time of both
trainers (best of 3), how many merges both learn and the length of the identical prefix of
the merge tables, and how many of 10,000 held-out captions encode to identical ids. Two
corpora: the course's shapes + digits captions (the template language saturates before
1,000 tokens) and mixed-language captions (data/mixed_language_corpus.txt, 20 languages).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from dalle_mini_impl import bpe  # noqa: E402
from dalle_mini_impl.datasets import DigitsDataset, ShapesDataset  # noqa: E402


def hf_train(corpus, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def best_of(fn, n=3):
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(vocab_size: int = 1000) -> None:
    bpe._gpt2_regex()  # build the \p{L}/\p{N} classes once, outside the timings (about 0.3 s)
    digits = DigitsDataset("all").captions  # 1,797
    shapes = ShapesDataset(20_000 - len(digits), image_size=16, seed=0, n_objects=(1, 2)).captions
    corpora = {
        "course (shapes+digits)": (shapes + digits,
                                   ShapesDataset(10_000, image_size=16, seed=1, split="all", n_objects=(1, 2)).captions),
        "mixed-language": (bpe.mixed_language_captions(20_000, seed=0), bpe.mixed_language_captions(10_000, seed=1)),
    }
    print(f"tokenizers BpeTrainer vs dalle_mini_impl.bpe.train, vocab_size={vocab_size}")
    for name, (train, held) in corpora.items():
        t_hf, hf = best_of(lambda: hf_train(train, vocab_size))
        t_ours, ours = best_of(lambda: bpe.train(train, vocab_size))
        hf_merges = [tuple(m) for m in json.loads(hf.to_str())["model"]["merges"]]
        same = next((i for i, (a, b) in enumerate(zip(hf_merges, ours.merges)) if a != b),
                    min(len(hf_merges), len(ours.merges)))
        hf_ids = [e.ids for e in hf.encode_batch(held)]
        ours_ids = [ours.encode(c) for c in held]
        n_same = sum(a == b for a, b in zip(hf_ids, ours_ids))
        strings = bpe.train(train, vocab_size, tie_break="strings")
        diverge = next((i for i, (a, b) in enumerate(zip(hf_merges, strings.merges)) if a != b), len(hf_merges))
        print(f"\n{name}: {len(train):,} training captions, {len(held):,} held out")
        print(f"  training time   tokenizers {t_hf:6.2f} s   ours {t_ours:6.2f} s   (best of 3)")
        print(f"  vocabulary      tokenizers {hf.get_vocab_size():6d}     ours {len(ours):6d}")
        print(f"  merges          tokenizers {len(hf_merges):6d}     ours {len(ours.merges):6d}   "
              f"identical prefix {same} ({'all' if same == len(hf_merges) == len(ours.merges) else 'PARTIAL'})")
        print(f"  held-out ids    {n_same:,} of {len(held):,} captions identical")
        print(f"  tie-break by strings instead of ids: first different merge at rank {diverge}")


if __name__ == "__main__":
    main()
