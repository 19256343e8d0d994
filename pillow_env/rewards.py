"""Reward functions: batched similarity of generations to references.

Every reward function has the signature ``fn(predictions, references) -> np.ndarray`` (one value
per pair, in [-1, 1]). A custom reward is any callable with that signature; its output is checked,
and a NaN, infinite, wrongly-shaped or out-of-range value raises :class:`RewardError` naming it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .encoder import Encoder, load_encoder

__all__ = ["RewardError", "RewardFn", "rouge_l", "exact_match", "SemanticSimilarity", "PillowReward",
           "check_finite", "check_reward", "reward_fingerprint"]

RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
REWARD_RANGE = (-1.0, 1.0)


class RewardError(ValueError):
    """A reward function returned something unusable; the message names the reward."""


def check_finite(name: str, values: object, n: int) -> np.ndarray:
    """Validate a reported component: ``n`` finite floats (any range)."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward {name!r} returned non-numeric values: {err}") from None
    if arr.shape != (n,):
        raise RewardError(f"reward {name!r} returned {arr.size} values for {n} predictions")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise RewardError(f"reward {name!r} returned {arr[bad]} (not finite) for item {bad}")
    return arr


def check_reward(name: str, values: object, n: int) -> np.ndarray:
    """Validate one reward's output: ``n`` finite floats in [-1, 1]."""
    arr = check_finite(name, values, n)
    low, high = REWARD_RANGE
    if arr.size and (arr.min() < low - 1e-6 or arr.max() > high + 1e-6):
        bad = int(np.flatnonzero((arr < low - 1e-6) | (arr > high + 1e-6))[0])
        raise RewardError(f"reward {name!r} returned {arr[bad]:.4g} for item {bad}, outside [{low}, {high}]")
    return np.clip(arr, low, high)


def reward_fingerprint(reward: object) -> str | None:
    """The reward's declared ``fingerprint`` string, or ``None`` when it declares none.

    Scores are cached only under a declared fingerprint. Python code cannot be identified by its
    content with certainty (a bound method, a global array, an environment variable read inside
    can all change between runs), so a reward without one is recomputed from the cached generation
    every time: a stale score is impossible by construction. Declare ``fingerprint`` (a string that
    changes whenever the reward's settings do) to have its scores cached too.
    """
    stable = getattr(reward, "fingerprint", None)
    return stable if isinstance(stable, str) else None


_scorer = None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 (rouge-score, with stemming), in [0, 1]."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([_scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)],
                    dtype=np.float64)


_PUNCT = re.compile(r"[\s\.\!\?,;:'\"`]+$|^[\s'\"`]+")


def _normalise(text: str) -> str:
    return " ".join(_PUNCT.sub("", text.strip().lower()).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 where prediction equals reference after lower-casing, trimming and dropping end punctuation."""
    return np.array([float(_normalise(p) == _normalise(r)) for p, r in zip(predictions, references)])


class SemanticSimilarity:
    """Cosine similarity of sentence embeddings (MiniLM by default), in [-1, 1]."""

    def __init__(self, encoder: Encoder | str = "minilm") -> None:
        self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        if isinstance(self._encoder, str):
            self._encoder = load_encoder(self._encoder)
        return self._encoder

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
        emb = self.encoder.encode(list(predictions) + list(references))
        n = len(predictions)
        return np.einsum("ij,ij->i", emb[:n], emb[n:]).astype(np.float64)


@dataclass
class PillowReward:
    """PILLOW's reward: a weighted sum of textual (ROUGE-L) and semantic (embedding cosine) similarity.

    ``reward = text_weight * rouge_l + semantic_weight * semantic``. The defaults weigh both equally
    and sum to 1, so the reward stays in [-1, 1] like its parts. Calling it returns every component
    (``rouge_l``, ``semantic``, ``exact_match``, any ``extra`` rewards) plus the combined ``reward``.

    Args:
        text_weight: weight of ROUGE-L F1.
        semantic_weight: weight of the embedding cosine.
        encoder: the sentence encoder (alias ``minilm`` or a sentence-transformers path), or one already loaded.
        extra: more named rewards to report (and add to the total with ``extra_weights``).
    """

    text_weight: float = 0.5
    semantic_weight: float = 0.5
    encoder: Encoder | str = "minilm"
    extra: Mapping[str, RewardFn] = field(default_factory=dict)
    extra_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, weight in [("text_weight", self.text_weight), ("semantic_weight", self.semantic_weight),
                             *self.extra_weights.items()]:
            if not np.isfinite(weight):
                raise ValueError(f"PillowReward: {name} must be a finite number, got {weight}")
        unknown = set(self.extra_weights) - set(self.extra)
        if unknown:
            raise ValueError(f"PillowReward: extra_weights names rewards not in extra: {sorted(unknown)}")
        self._semantic = SemanticSimilarity(self.encoder)

    @property
    def fingerprint(self) -> str | None:
        """Identifies the reward settings, for cache keys; ``None`` (scores never cached) when an
        ``extra`` reward declares no fingerprint of its own (:func:`reward_fingerprint`)."""
        encoder = self.encoder if isinstance(self.encoder, str) else self.encoder.name
        extra = sorted((k, reward_fingerprint(f), self.extra_weights.get(k, 0.0)) for k, f in self.extra.items())
        if any(fp is None for _, fp, _ in extra):
            return None
        text = repr((self.text_weight, self.semantic_weight, encoder, extra))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        n = len(predictions)
        parts = {"rouge_l": check_reward("rouge_l", rouge_l(predictions, references), n),
                 "semantic": check_reward("semantic", self._semantic(predictions, references), n),
                 "exact_match": check_reward("exact_match", exact_match(predictions, references), n)}
        for name, fn in self.extra.items():
            parts[name] = check_reward(name, fn(predictions, references), n)
        total = self.text_weight * parts["rouge_l"] + self.semantic_weight * parts["semantic"]
        for name, weight in self.extra_weights.items():
            total = total + weight * parts[name]
        parts["reward"] = total
        return parts
