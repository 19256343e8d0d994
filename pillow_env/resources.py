"""Heavy objects loaded once per process and shared by every env that asks for the same ones.

A vector env of 16 sub-envs, or 5 agents benchmarked one after another, all use one LLM copy, one
encoder, one reward engine (and so one cache): the memory problem of one-model-per-subprocess
designs does not arise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import DEFAULT_MODEL, load_backend
from .cache import LRUCache
from .data import Example, examples_fingerprint
from .encoder import Encoder, load_encoder
from .engine import RewardEngine
from .prompts import user_text
from .rewards import PillowReward

__all__ = ["make_engine", "shared_backend", "shared_engine", "embed_examples", "embed_field", "set_threads", "DEFAULT_MODEL"]


def set_threads(threads: int | None) -> None:
    """CPU threads for the in-process LLM and encoder (torch, process-wide). ``None`` keeps torch's
    default (one per core), which is fastest on an idle machine; on a shared one, give each process
    its share of the cores, or busy-waiting threads of two processes slow both to a crawl."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=4)
def shared_backend(model: str = DEFAULT_MODEL, adapter: str | None = None) -> Any:
    """The backend a ``model`` string names (see :mod:`pillow_env.backends`), one per process."""
    return load_backend(model, adapter)


def make_engine(backend: Any, encoder: Encoder | str = "minilm", *, reward: Callable[..., Any] | None = None,
                **settings: Any) -> RewardEngine:
    """The one place a reward engine is built: ``backend`` (a loaded backend, or a ``model`` string),
    scored by ``reward`` (default: ``PillowReward`` on ``encoder``); ``settings`` are
    :class:`~pillow_env.engine.RewardEngine`'s (``signal``, ``max_new_tokens``, ``cache_path``, ...)."""
    if isinstance(backend, str):
        backend = shared_backend(backend)
    if reward is None:
        reward = PillowReward(encoder=load_encoder(encoder) if isinstance(encoder, str) else encoder)
    return RewardEngine(backend, reward, **settings)


@functools.lru_cache(maxsize=8)
def shared_engine(model: str = DEFAULT_MODEL, adapter: str | None = None, encoder: str = "minilm",
                  max_new_tokens: int = 24, cache_path: str | None = None, signal: str = "generate",
                  log_path: str | None = None) -> RewardEngine:
    """The engine for the default reward (or the likelihood signal) on a named model: one per distinct setting."""
    return make_engine(shared_backend(model, adapter), encoder, max_new_tokens=max_new_tokens, cache_path=cache_path,
                       signal=signal, log_path=log_path)


_EMBEDDINGS = LRUCache(maxsize=64)  # bounded: a selector streaming new queries must not grow it forever


def forget_embeddings() -> None:
    """Empty the embedding memo (benchmarks that time embedding from scratch)."""
    _EMBEDDINGS.clear()


def _memoised(encoder: Encoder, examples: Sequence[Example], what: Any, text: Callable[[Example], str]) -> np.ndarray:
    key = repr((getattr(encoder, "name", repr(encoder)), examples_fingerprint(examples), what))
    found = _EMBEDDINGS.get(key)
    if found is None:
        found = np.ascontiguousarray(encoder.encode([text(e) for e in examples]), dtype=np.float32)
        _EMBEDDINGS.put(key, found)
    return found


def embed_examples(encoder: Encoder, examples: Sequence[Example], *, with_output: bool) -> np.ndarray:
    """Embeddings of examples (query side: instruction + input; pool side: plus the answer), memoised."""
    return _memoised(encoder, examples, with_output,
                     lambda e: user_text(e) + ("\n" + e.output if with_output else ""))


def embed_field(encoder: Encoder, examples: Sequence[Example], field: str) -> np.ndarray:
    """Embeddings of one field of examples (``instruction``, ``input`` or ``output``), memoised."""
    if field not in ("instruction", "input", "output"):
        raise ValueError(f"embed_field: field must be instruction, input or output, got {field!r}")
    return _memoised(encoder, examples, field, lambda e: getattr(e, field) or "")


def resolve_cache_path(cache_path: str | Path | None) -> str | None:
    return None if cache_path is None else str(Path(cache_path).expanduser().resolve())
