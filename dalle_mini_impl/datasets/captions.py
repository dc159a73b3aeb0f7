"""The course's caption language in one list: every phrasing the shapes and digits datasets
write, without drawing an image. ``tokenizer.course_tokenizer`` learns its BPE on it, and
``train dalle`` adds it to your own captions so the course's words stay in the vocabulary."""
from __future__ import annotations

import random

from .digits import _TEMPLATES as DIGIT_TEMPLATES
from .digits import digit_caption
from .shapes import (COLOUR_NAMES, ONE_TEMPLATES, POSITIONS, RELATIONS, SHAPES, SIZES, TWO_TEMPLATES,
                     caption_from_attributes)


def course_captions() -> list[str]:
    """Every phrasing of the course's caption language, deterministic and without drawing a
    single image: all one-object shapes captions, the two-object ones of a fixed sample,
    and every digits caption."""

    objs = [{"shape": s, "colour": c, "size": z} for s in SHAPES for c in COLOUR_NAMES for z in SIZES]
    caps = [caption_from_attributes({"objects": [o | {"position": p}], "relation": None}, v)
            for o in objs for p in POSITIONS for v in range(len(ONE_TEMPLATES))]
    rng = random.Random(0)
    for _ in range(4000):
        a, b = rng.sample(objs, 2)
        caps.append(caption_from_attributes({"objects": [a, b], "relation": rng.choice(RELATIONS)},
                                            rng.randrange(len(TWO_TEMPLATES))))
    caps += [digit_caption(d, v) for d in range(10) for v in range(len(DIGIT_TEMPLATES))] * 20
    return caps
