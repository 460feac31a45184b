"""Straightforward references for the DUAL / Dyn-Unc / TDDS scores, Beta sampling and CCS.

They mirror how the public research code computes these (the DUAL authors' release, the TDDS and
CCS releases): Python loops over sliding windows — and, in the per-sample variants, over samples —
on a ``(T, N)`` array of true-class probabilities (epochs first, as that code stores them), and
per-stratum loops for CCS. They are deliberately plain: the speed benchmark times `hf_prune`
against them, and their outputs must agree with `hf_prune` up to float rounding (the DUAL
release multiplies the window std by 10; that constant is left out here so values compare equal).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

__all__ = [
    "dual_per_sample",
    "dual_window_loop",
    "dyn_unc_window_loop",
    "tdds_window_loop",
    "beta_sampling",
    "stratified_sampling",
]


def dual_per_sample(target_probs: np.ndarray, window_size: int = 10) -> np.ndarray:
    """DUAL (Eq. 3–4) with a Python loop over samples and, inside, over windows."""
    epochs, n = target_probs.shape
    scores = np.zeros(n)
    for i in range(n):
        per_window = []
        for k in range(epochs - window_size + 1):
            window = target_probs[k : k + window_size, i].astype(np.float64)
            per_window.append((1 - window.mean()) * window.std(ddof=1))
        scores[i] = sum(per_window) / len(per_window)
    return scores


def dual_window_loop(target_probs: np.ndarray, window_size: int = 10) -> np.ndarray:
    """DUAL with a loop over windows, vectorised over samples (the DUAL release's structure)."""
    windows = []
    for k in range(target_probs.shape[0] - window_size + 1):
        window = target_probs[k : k + window_size].astype(np.float64)
        windows.append(window.std(axis=0, ddof=1) * (1 - window.mean(axis=0)))
    return np.stack(windows).mean(axis=0)


def dyn_unc_window_loop(target_probs: np.ndarray, window_size: int = 10) -> np.ndarray:
    """Dyn-Unc (Eq. 1–2) with a loop over windows, vectorised over samples."""
    windows = []
    for k in range(target_probs.shape[0] - window_size + 1):
        windows.append(target_probs[k : k + window_size].astype(np.float64).std(axis=0, ddof=1))
    return np.stack(windows).mean(axis=0)


def tdds_window_loop(probs: np.ndarray, window_size: int = 10, decay: float = 0.9) -> np.ndarray:
    """TDDS from full ``(T, N, C)`` softmax outputs, looping over windows and epoch pairs.

    Uses the signed KL(p_{t+1} ‖ p_t) per epoch pair (what `hf_prune` records), not the TDDS
    release's sum of absolute per-class terms.
    """
    epochs = probs.shape[0]
    total = 0.0
    for k in range(epochs - window_size + 1):
        divergences = []
        for j in range(k, k + window_size - 1):
            log_ratio = np.log(probs[j + 1].astype(np.float64)) - np.log(probs[j].astype(np.float64))
            divergences.append((probs[j + 1] * log_ratio).sum(axis=1))
        divergences = np.stack(divergences)
        spread = np.linalg.norm(divergences - divergences.mean(axis=0), axis=0)
        total = total + spread * decay * (1 - decay) ** (epochs - window_size - k)
    return total


def beta_sampling(
    prune_rate: float,
    c_d: float,
    target_probs: np.ndarray,
    score: np.ndarray,
    rng: np.random.Generator,
    C: float = 15.0,
) -> np.ndarray:
    """Alg. 1's β-sampling: ``np.random.choice`` with p ∝ Beta pdf(prediction mean) × score.

    μ_D is the mean prediction of the 10 highest-score samples; α = C − β + 1 (App. C).
    """
    n = target_probs.shape[1]
    pred_mean = target_probs.mean(axis=0)
    anchor = pred_mean[np.argsort(score)[-10:]].mean()
    b = C * (1 - anchor) * (1 - prune_rate**c_d)
    joint = beta.pdf(pred_mean, C + 1 - b, b) * score
    return rng.choice(n, size=int(round((1 - prune_rate) * n)), replace=False, p=joint / joint.sum())


def stratified_sampling(score: np.ndarray, coreset_num: int, rng: np.random.Generator, stratas: int = 50) -> list:
    """CCS stratified sampling with per-stratum Python loops (the CCS release's structure)."""
    low, high = score.min(), score.max()
    step = (high - low) / stratas
    strata = [np.flatnonzero(((score - low) / (high - low) * stratas).astype(int).clip(max=stratas - 1) == s)
              for s in range(stratas)] if step > 0 else [np.arange(len(score))]
    sizes = [len(s) for s in strata]
    budgets = [0] * len(strata)
    left = coreset_num
    order = sorted(range(len(strata)), key=lambda s: sizes[s])
    for position, s in enumerate(order):
        budgets[s] = min(sizes[s], left // (len(order) - position))
        left -= budgets[s]
    selected = []
    for s, members in enumerate(strata):
        selected += list(rng.permutation(members)[: budgets[s]])
    return selected
