"""Heavy objects loaded once per process and shared by every env that asks for the same ones.

A vector env of 16 sub-envs, or 5 agents benchmarked one after another, all use one LLM copy, one
encoder, one reward engine (and so one cache): the memory problem of one-model-per-subprocess
designs does not arise.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
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


DISK_MIN_EXAMPLES = 64  # smaller sets (a selector's queries) embed in milliseconds: memory only


def embedding_cache_dir() -> Path:
    """Where pool embeddings are kept between processes: ``$PILLOW_ENV_CACHE/embeddings`` (default
    ``~/.cache/pillow-env/embeddings``)."""
    from .backends.hf import cache_dir

    return cache_dir() / "embeddings"


def _disk_file(encoder: Encoder, fingerprint: str, what: Any) -> Path | None:
    """The ``.npy`` file of one embedded set, or ``None`` for encoders without a weights fingerprint
    (stand-ins, custom classes): their embeddings are not tied to fixed weights, so never reused."""
    weights = getattr(encoder, "fingerprint", None)
    if not isinstance(weights, str):
        return None
    key = hashlib.sha256(repr((weights, fingerprint, what)).encode()).hexdigest()[:32]
    return embedding_cache_dir() / f"{key}.npy"


def _read_disk(path: Path, n: int) -> np.ndarray | None:
    """A cached embedding matrix of ``n`` rows, or ``None`` (absent, unreadable, damaged: recompute)."""
    if not path.is_file():
        return None
    try:
        found = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        warnings.warn(f"{path}: unreadable embedding cache ({type(err).__name__}: {err}); recomputing", stacklevel=4)
        return None
    if found.dtype != np.float32 or found.ndim != 2 or found.shape[0] != n or not np.isfinite(found).all():
        warnings.warn(f"{path}: damaged embedding cache (shape {found.shape}, {found.dtype}); recomputing",
                      stacklevel=4)
        return None
    return found


def _write_disk(path: Path, embeddings: np.ndarray) -> None:
    """Kept for the next process, written under a temporary name and renamed (a kill leaves no half file);
    a cache that cannot be written only costs the next process the recomputation."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, embeddings, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"embeddings not cached: cannot write {path} ({err.strerror or err}); set PILLOW_ENV_CACHE "
                      "to a writable folder", stacklevel=4)


def _memoised(encoder: Encoder, examples: Sequence[Example], what: Any, text: Callable[[Example], str]) -> np.ndarray:
    """Embeddings from this process's memo, else (sets of ``DISK_MIN_EXAMPLES`` or more) the disk cache
    keyed by the encoder's weights and the examples' content, else the encoder."""
    fingerprint = examples_fingerprint(examples)
    key = repr((getattr(encoder, "name", repr(encoder)), getattr(encoder, "fingerprint", None), fingerprint, what))
    found = _EMBEDDINGS.get(key)
    if found is not None:
        return found
    disk = _disk_file(encoder, fingerprint, what) if len(examples) >= DISK_MIN_EXAMPLES else None
    found = None if disk is None else _read_disk(disk, len(examples))
    if found is None:
        found = np.ascontiguousarray(encoder.encode([text(e) for e in examples]), dtype=np.float32)
        if disk is not None:
            _write_disk(disk, found)
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
