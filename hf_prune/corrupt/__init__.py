"""Corruptions that mark affected rows in a boolean column.

Each function returns a new Dataset in which exactly ``round(rate · N)`` seeded-random rows are
corrupted and flagged, so a benchmark can count how many corrupted rows a selector kept:

- `symmetric_label_noise`: labels replaced by a different class, uniformly (``is_noisy_label``);
- `corrupt_images`: Gaussian noise, occlusion, resolution reduction, fog, motion blur in equal
  shares (``is_corrupted`` and the name in ``corruption``);
- `fgsm` / `pgd` (`adversarial_attack`): adversarial examples against a given model (``is_adversarial``);
- `web_noise` and its single kinds (`mismatched_pairs`, `uninformative_captions`, `near_duplicates`,
  `low_information_images`, `wrong_language_captions`): web noise of image–caption pools
  (``is_corrupted`` and the kind in ``corruption``).

Example:
    >>> from hf_prune.corrupt import symmetric_label_noise, corrupt_images
    >>> noisy = symmetric_label_noise(ds["train"], rate=0.2, seed=0)
    >>> kept = subset["is_noisy_label"].count(True)
"""

from .adversarial import adversarial_attack, fgsm, pgd
from .image import CORRUPTIONS, apply_corruption, corrupt_images, plasma_fractal
from .label_noise import symmetric_label_noise
from .web_noise import (
    WEB_NOISE,
    low_information_images,
    mismatched_pairs,
    near_duplicates,
    paraphrase,
    uninformative_captions,
    web_noise,
    wrong_language_captions,
)

__all__ = [
    "CORRUPTIONS", "adversarial_attack", "apply_corruption", "corrupt_images", "fgsm", "pgd", "plasma_fractal",
    "symmetric_label_noise",
    "WEB_NOISE", "low_information_images", "mismatched_pairs", "near_duplicates", "paraphrase", "uninformative_captions",
    "web_noise", "wrong_language_captions",
]
