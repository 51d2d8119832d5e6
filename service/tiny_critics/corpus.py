"""The text every tiny critic's tokenizer is trained on (offline, in seconds), shared by all families."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from service.rubric import DIMENSIONS

# Word lists of the tiny tokenizers (changing one changes that family's tiny files for every seed).
QWEN_WORDS = ("the a video frame shows person walking running car red blue green yellow white black purple orange "
              "cat dog bird monkey river sky city night day smooth motion jitter noise blurry sharp realistic "
              "consistent matches does not match caption scene subject color style hands face limbs").split()
VILA_WORDS = ("the a video frame shows person walking running car red blue green yellow white black cat dog bird "
              "river sky city night day smooth motion jitter noise blurry sharp realistic consistent matches does "
              "not match caption scene subject color style hands face limbs user assistant chat curious artificial "
              "intelligence helpful detailed polite answers questions").split()


def lift_answer_corpus(rng: random.Random, words: Sequence[str] = QWEN_WORDS, answer_prefix: str = "",
                       labels: Sequence[str] = ("Good", "Bad")) -> Iterator[str]:
    """LiFT-like answers starting with one of `labels`. By default "Good" and "Bad" but never "Normal", so the
    tokenizer learns the first two as whole tokens and splits "Normal": multi-token label scoring gets
    exercised (real critics' tokenizers have all three whole: pass all three for that). `answer_prefix` is what
    precedes an answer in the family's chat template, so the labels are learnt in the context they are scored in."""
    for _ in range(2500):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 16)))
        yield f"{answer_prefix}{rng.choice(list(labels))}. {sentence}."
        yield sentence
    for d in DIMENSIONS:
        for _ in range(30):
            yield d.question


__all__ = ["QWEN_WORDS", "VILA_WORDS", "lift_answer_corpus"]
