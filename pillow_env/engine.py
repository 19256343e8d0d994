"""One reward engine for every env: batched, deduplicated, cached generation + scoring.

Each request is (chosen exemplars, query). The engine renders them, looks every prompt up in the
memory LRU, then the disk cache, and sends only the misses, deduplicated, to the generator as
batches; it scores the new generations in one vectorised call and stores them in both caches.

Two signals: ``"generate"`` (greedy answer scored by the reward function: what PILLOW reports) and
``"loglik"`` (the reference's mean token log-likelihood given the prompt, one forward pass and no
decoding, mapped to ``2 * exp(mean logprob) - 1`` in (-1, 1]: a cheaper, deterministic training signal).
Every scored request can be appended to a trajectory log for off-policy learners.

The key is a hash of the generator's fingerprint (weights + adapter + prompt format), the
generation settings, the rendered prompt and the reference, plus the reward's declared
``fingerprint`` when it has one (the built-in rewards do): then the scores are cached too.
A reward without one is recomputed from the cached generation on every request, so a cache file
can be shared across runs and algorithms without ever serving a stale score.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .backends.base import Generator, LikelihoodUnsupported
from .cache import DiskCache, LRUCache
from .data import Example
from .rewards import PillowReward, RewardFn, check_finite, check_reward, reward_fingerprint
from .trajectories import TrajectoryLog, example_key

__all__ = ["Generator", "RewardEngine", "ScoredGeneration", "EngineStats", "SIGNALS", "TRAIN_REWARDS", "SIGNAL_OF"]

SIGNALS = ("generate", "loglik")
# The training signal as users name it (CLI ``--train-reward``, the env's ``reward=``, listwise's
# ``train_reward=``), and the engine signal that computes it.
TRAIN_REWARDS = ("pillow", "loglik")
SIGNAL_OF = {"pillow": "generate", "loglik": "loglik"}


@dataclass(frozen=True)
class ScoredGeneration:
    """The outcome of one (exemplars, query) request."""

    prompt: str
    generation: str
    reference: str
    reward: float
    components: Mapping[str, float]
    cached: bool = False


@dataclass
class EngineStats:
    """What an engine did: ``generations`` (answers decoded) and ``loglik_passes`` (likelihood
    passes) are the LLM calls (``llm_calls``), ``backend_calls`` the batched requests they took."""

    requests: int = 0
    generations: int = 0
    loglik_passes: int = 0
    rescored: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    duplicates: int = 0
    backend_calls: int = 0  # batched calls to the backend (generate or loglik), each of up to batch_size prompts
    max_batch: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    render_seconds: float = 0.0
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0
    cache_seconds: float = 0.0

    @property
    def cache_hits(self) -> int:
        return self.memory_hits + self.disk_hits

    @property
    def llm_calls(self) -> int:
        """Generations plus likelihood passes: what the LLM was actually asked for."""
        return self.generations + self.loglik_passes

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "cache_hits": self.cache_hits, "llm_calls": self.llm_calls}


def _as_scorer(reward: Callable[..., Any]) -> Callable[[Sequence[str], Sequence[str]], dict[str, np.ndarray]]:
    """A `PillowReward` returns its components; a plain reward fn becomes ``{"reward": values}``."""
    def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
        out = reward(predictions, references)
        name, n = _name(reward), len(predictions)
        if isinstance(out, Mapping):
            if "reward" not in out:
                raise ValueError(f"reward {name!r} returned a mapping without a 'reward' entry")
            parts = {"reward": check_reward(name, out["reward"], n)}  # same checks as a plain array
            for key, values in out.items():
                if key != "reward":
                    parts[key] = check_finite(f"{name}[{key!r}]", values, n)
            return parts
        return {"reward": check_reward(name, out, n)}
    return score


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


@dataclass
class RewardEngine:
    """Scores (exemplars, query) requests for any number of envs.

    Args:
        generator: the LLM (a :class:`~pillow_env.backends.hf.Backbone` or anything with the same
            ``generate`` / ``count_tokens`` / ``fingerprint`` / ``renderer``).
        reward: a :class:`~pillow_env.rewards.PillowReward` or any ``fn(predictions, references)``
            (``"generate"`` signal only).
        signal: ``"generate"`` (answer, then reward) or ``"loglik"`` (likelihood of the reference).
        max_new_tokens, batch_size, stop: generation settings (part of the cache key).
        memory_cache_size: entries kept in the in-memory LRU.
        cache_path: an SQLite file shared across runs (``None``: memory only).
        log_path: a JSONL trajectory log; every scored request is appended (``None``: no log).
    """

    generator: Generator
    reward: RewardFn | Callable[..., Any]
    max_new_tokens: int = 24
    batch_size: int = 16
    stop: tuple[str, ...] = ()
    memory_cache_size: int = 200_000
    cache_path: str | Path | None = None
    signal: Literal["generate", "loglik"] = "generate"
    log_path: str | Path | None = None
    stats: EngineStats = field(default_factory=EngineStats, init=False)

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.signal == "loglik" and not callable(getattr(self.generator, "loglik", None)):
            raise LikelihoodUnsupported(f"the LLM backend {type(self.generator).__name__} cannot score likelihoods; "
                             "use signal='generate' or an in-process Hugging Face model")
        self._score = _as_scorer(self.reward)
        self._memory = LRUCache(self.memory_cache_size)
        self._disk = DiskCache(self.cache_path) if self.cache_path is not None else None
        self._log = TrajectoryLog(self.log_path) if self.log_path is not None else None
        # Scores are cached only for a reward that declares what it is; any other is recomputed.
        self._rescore = self.signal == "generate" and reward_fingerprint(self.reward) is None
        if self.signal == "loglik":
            settings = repr((self.generator.fingerprint, "loglik-mean-v1"))
        else:
            reward_fp = "generation-only" if self._rescore else reward_fingerprint(self.reward)
            settings = repr((self.generator.fingerprint, self.max_new_tokens, tuple(self.stop), reward_fp))
        self._prefix = hashlib.sha256(settings.encode()).digest()
        # What logged episodes are matched by: a reward without a declared fingerprint cannot be told
        # from another, so its episodes match only this engine's own (never another run's stale ones).
        self._fingerprint = self._prefix.hex()[:16] if not self._rescore else \
            self._prefix.hex()[:8] + uuid.uuid4().hex[:8]
        self._renders = LRUCache(self.memory_cache_size)

    @property
    def fingerprint(self) -> str:
        """Identifies what this engine's scores mean (model, settings, reward), for trajectory logs."""
        return self._fingerprint

    def config(self) -> dict[str, Any]:
        """This engine's settings as ``PillowMatchEnv`` arguments, to rebuild it by name in another process.

        Only for a backend loaded by name (:func:`~pillow_env.backends.load_backend` records it) and the
        default ``PillowReward`` on a named encoder; anything else raises ``ValueError`` saying which.
        """
        source = getattr(self.generator, "source", None)
        if source is None:
            raise ValueError(f"engine: its backend {type(self.generator).__name__} was not loaded by name "
                             "(load_backend / shared_backend), so another process cannot rebuild it")
        reward = self.reward
        defaults = {f.name: f.default for f in fields(PillowReward) if f.name in ("text_weight", "semantic_weight")}
        encoder = getattr(reward, "encoder", None)
        encoder = encoder if isinstance(encoder, str) else getattr(encoder, "name", None)
        if not (isinstance(reward, PillowReward) and not reward.extra and isinstance(encoder, str)
                and all(getattr(reward, k) == v for k, v in defaults.items())):
            raise ValueError("engine: only the default PillowReward on a named encoder can be rebuilt by name "
                             f"in another process, not {_name(reward)}")
        if self.stop:
            raise ValueError("engine: stop strings cannot be passed by name to another process")
        return {"model": source[0], "adapter": source[1], "encoder": encoder,
                "reward": "loglik" if self.signal == "loglik" else None,
                "cache_path": None if self.cache_path is None else str(Path(self.cache_path).expanduser().resolve()),
                "max_new_tokens": self.max_new_tokens}

    def with_signal(self, signal: Literal["generate", "loglik"]) -> RewardEngine:
        """This engine, or a sibling on the same LLM, cache file, log and stats that scores with ``signal``
        (sharing the stats keeps one count of the LLM calls a run made)."""
        if signal == self.signal:
            return self
        sibling = replace(self, signal=signal)
        sibling.stats = self.stats
        return sibling

    def render(self, exemplars: Sequence[Example], query: Example) -> str:
        """The prompt text, memoised: rendering a chat template costs more than a cache hit."""
        key = repr(([(e.instruction, e.input, e.output) for e in exemplars], query.instruction, query.input))
        prompt = self._renders.get(key)
        if prompt is None:
            prompt = self.generator.renderer.render(exemplars, query)
            self._renders.put(key, prompt)
        return prompt

    def _key(self, prompt: str, reference: str) -> str:
        h = hashlib.blake2b(self._prefix, digest_size=16)
        h.update(prompt.encode())
        h.update(b"\0")
        h.update(reference.encode())
        return h.hexdigest()

    def score(self, requests: Sequence[tuple[Sequence[Example], Example]]) -> list[ScoredGeneration]:
        """Generate and score a batch of requests; results are in request order."""
        stats = self.stats
        t0 = time.perf_counter()
        prompts = [self.render(ex, q) for ex, q in requests]
        references = [q.output for _, q in requests]
        keys = [self._key(p, r) for p, r in zip(prompts, references)]
        stats.requests += len(requests)
        t1 = time.perf_counter()
        stats.render_seconds += t1 - t0

        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            hit = self._memory.get(key)
            if hit is not None:
                found[key] = hit
        stats.memory_hits += sum(k in found for k in keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if self._disk is not None and missing:
            on_disk = self._disk.get_many(missing)
            for key, value in on_disk.items():
                self._memory.put(key, value)
            found.update(on_disk)
            stats.disk_hits += sum(k in on_disk for k in keys)
            missing = [k for k in missing if k not in on_disk]
        stats.cache_seconds += time.perf_counter() - t1

        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            wanted = set(missing)
            stats.duplicates += sum(1 for k in keys if k in wanted) - len(missing)
            # Batch by batch, each stored as soon as it is scored: a failure (a server gone, a kill)
            # loses at most the batch in flight, and a rerun resumes from the cache.
            for lo in range(0, len(missing), self.batch_size):
                chunk = missing[lo:lo + self.batch_size]
                new = self._run([prompts[first[k]] for k in chunk], [references[first[k]] for k in chunk])
                stored = [{"generation": v["generation"]} if self._rescore else v for v in new]
                for key, value, kept in zip(chunk, new, stored):
                    self._memory.put(key, kept)
                    found[key] = value
                if self._disk is not None:
                    t = time.perf_counter()
                    self._disk.put_many(dict(zip(chunk, stored)))
                    stats.cache_seconds += time.perf_counter() - t

        fresh = set(missing)
        if self._rescore:
            self._score_cached(found, fresh, keys, references)
        results = [ScoredGeneration(p, found[k]["generation"], r, found[k]["reward"], found[k]["components"],
                                    cached=k not in fresh)
                   for p, r, k in zip(prompts, references, keys)]
        if self._log is not None:
            self._log.append({"query": example_key(q), "exemplars": [example_key(e) for e in ex],
                              "reward": s.reward, "components": dict(s.components), "cached": s.cached,
                              "signal": self.signal, "fingerprint": self.fingerprint}
                             for (ex, q), s in zip(requests, results))
        return results

    def _score_cached(self, found: dict[str, dict[str, Any]], fresh: set[str], keys: list[str],
                      references: list[str]) -> None:
        """Score cached generations afresh with the reward as it is now (one vectorised call)."""
        reference = dict(zip(keys, references))
        cached = [k for k in dict.fromkeys(keys) if k not in fresh]
        if not cached:
            return
        t = time.perf_counter()
        generations = [found[k]["generation"] for k in cached]
        parts = self._score(generations, [reference[k] for k in cached])
        self.stats.scoring_seconds += time.perf_counter() - t
        self.stats.rescored += len(cached)
        for i, (key, generation) in enumerate(zip(cached, generations)):
            found[key] = {"generation": generation, "reward": float(parts["reward"][i]),
                          "components": {name: float(v[i]) for name, v in parts.items() if name != "reward"}}

    def _run(self, prompts: list[str], references: list[str]) -> list[dict[str, Any]]:
        if self.signal == "loglik":
            return self._run_loglik(prompts, references)
        stats = self.stats
        t = time.perf_counter()
        generations = self.generator.generate(prompts, self.max_new_tokens, batch_size=self.batch_size,
                                              stop=self.stop)
        stats.generation_seconds += time.perf_counter() - t
        stats.generations += len(prompts)
        stats.backend_calls += 1
        stats.max_batch = max(stats.max_batch, len(prompts))
        stats.prompt_tokens += sum(self.generator.count_tokens(prompts))
        stats.generated_tokens += sum(self.generator.count_tokens(generations)) if generations else 0
        t = time.perf_counter()
        parts = self._score(generations, references)
        stats.scoring_seconds += time.perf_counter() - t
        return [{"generation": g, "reward": float(parts["reward"][i]),
                 "components": {name: float(v[i]) for name, v in parts.items() if name != "reward"}}
                for i, g in enumerate(generations)]

    def _run_loglik(self, prompts: list[str], references: list[str]) -> list[dict[str, Any]]:
        stats = self.stats
        t = time.perf_counter()
        mean_logprob = self.generator.loglik(prompts, references, batch_size=self.batch_size, mean=True)
        stats.generation_seconds += time.perf_counter() - t
        stats.loglik_passes += len(prompts)
        stats.backend_calls += 1
        stats.max_batch = max(stats.max_batch, len(prompts))
        stats.prompt_tokens += sum(self.generator.count_tokens(prompts))
        rewards = check_reward("loglik", 2.0 * np.exp(np.asarray(mean_logprob, dtype=np.float64)) - 1.0, len(prompts))
        return [{"generation": "", "reward": float(r), "components": {"mean_logprob": float(lp)}}
                for r, lp in zip(rewards, mean_logprob)]

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
