"""LiFT in miniature: the pieces `benchmarks/lift_in_miniature.py` chains (and tests reuse).

- `clips`: synthetic captioned clips (a coloured scene, a moving square, sometimes a shaking or deformed square) to
  pre-train the tiny generator on, so its samples differ in what a rule can judge;
- `rules`: the hidden "human" raters, one rule per LiFT dimension, and their ratings in LiFT's format;
- `pretrain`: the tiny CogVideoX made able to draw (its VAE, then its transformer, on those clips).
"""
