"""``PillowMatch-v0``: pick ``m`` exemplars from a pool, one per step, for an instruction query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .cache import check_cache_path
from .data import Example, ExampleSource, require_answers, resolve_examples
from .encoder import Encoder, load_encoder
from .engine import SIGNAL_OF, TRAIN_REWARDS, RewardEngine, ScoredGeneration
from .prompts import user_text
from .resources import (DEFAULT_MODEL, embed_examples, make_engine, resolve_cache_path, set_threads,
                        shared_backend, shared_engine)
from .suite import suite_max_new_tokens

__all__ = ["PillowMatchEnv", "Request"]

Request = tuple[list[Example], Example]


def _is_integer(value: Any) -> bool:
    """An int or a 0-d / one-element integer array, as ``Discrete`` holds; not a bool, float or string."""
    array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic)) else None
    if array is not None:
        return array.size == 1 and np.issubdtype(array.dtype, np.integer)
    return isinstance(value, int) and not isinstance(value, bool)


class PillowMatchEnv(gym.Env):
    """Choose ``m`` exemplars from a pool for one query; the LLM's answer with them is the reward.

    ## Observation (``observation="embedding"``, the default; ``Dict``)

    | key | space | meaning |
    |---|---|---|
    | ``query`` | ``Box(-1, 1, (d,))`` | sentence embedding of the query (instruction + input) |
    | ``chosen`` | ``Box(-1, 1, (m, d))`` | embeddings of the exemplars chosen so far, zero rows after |
    | ``chosen_mask`` | ``MultiBinary(K)`` | 1 for pool entries already chosen |
    | ``step`` | ``Discrete(m + 1)`` | how many exemplars are chosen |

    ``observation="index"`` replaces the embeddings by ``query_index`` (``Discrete(Q)``), for tabular
    agents. The text view (query, chosen exemplars) is in ``info`` and ``render()``.

    ## Action

    ``Discrete(K)``: the pool index of the next exemplar. An index chosen before in this episode is
    invalid, and so, with ``candidates=C``, is any index outside the C pool entries nearest the query
    (its shortlist); ``action_masks()`` / ``info["action_mask"]`` mark the valid ones. With
    ``invalid_action="raise"`` it raises ``ValueError``; with ``"penalize"`` (default) the step is a
    no-op with reward ``invalid_penalty``, and after ``2 * m`` invalid actions the episode is truncated,
    so an agent that ignores masks cannot loop forever.

    ## Reward

    Sparse (default, as in PILLOW): 0 until step ``m``; then the chosen exemplars and the query are
    rendered, the LLM generates greedily, and the reward function scores the generation against the
    reference (``PillowReward``: 0.5 ROUGE-L + 0.5 MiniLM cosine). ``info`` then carries ``prompt``,
    ``generation``, ``reference`` and each component. Dense (``dense=True``): the LLM answers after
    every step and the reward is the improvement over the previous step (step 0 = zero-shot), so the
    rewards of an episode sum to the final score minus the zero-shot score. ``reward="loglik"``
    replaces generation by one forward pass: the reference's mean token log-likelihood given the
    prompt, as ``2 * exp(mean logprob) - 1`` (a cheaper training signal; evaluate with the default).

    ## Episode

    ``reset(seed=..., options={"query_index": i})`` picks a query (uniformly with the env's RNG when
    no index is given); terminated after ``m`` valid actions.

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | ``pool`` | ``"builtin"`` | exemplar pool: a built-in suite (``"builtin"``, ``"t0"``, ``"selfinstruct"``), a dataset file, or a list of ``Example`` or of records (dicts); repeats are dropped |
    | ``queries`` | ``"builtin"`` | queries, likewise (a built-in suite's ``split``) |
    | ``split`` | ``"train"`` | built-in split for ``queries``: ``"train"`` or ``"test"`` |
    | ``m`` | 2 | exemplars per episode |
    | ``model`` / ``adapter`` | SmolLM2-135M-Instruct / ``None`` | any HF causal LM name/path; peft adapter folder |
    | ``encoder`` | ``"minilm"`` | sentence encoder (name or loaded ``Encoder``) for observations and reward |
    | ``reward`` | ``None`` | ``None``/``"pillow"``: ``PillowReward``; ``"loglik"``; any ``fn(predictions, references)`` |
    | ``engine`` | ``None`` | share an existing ``RewardEngine`` (overrides model/adapter/reward) |
    | ``cache_path`` | ``None`` | SQLite file caching generations across runs |
    | ``max_new_tokens`` | ``None`` | generation budget per answer (``None``: the ``queries`` suite's, e.g. 128 for ``"selfinstruct"``, else 24) |
    | ``candidates`` | ``None`` | restrict actions to the C pool entries nearest the query (``None``: whole pool) |
    | ``trajectory_log`` | ``None`` | JSONL file; every scored episode is appended (for off-policy learners) |
    | ``threads`` | ``None`` | CPU threads for the in-process LLM (``None``: torch's default, one per core) |
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, pool: ExampleSource = "builtin", queries: ExampleSource = "builtin", *,
                 split: str = "train", m: int = 2, model: str = DEFAULT_MODEL, adapter: str | None = None,
                 encoder: str | Encoder = "minilm", reward: Callable[..., Any] | str | None = None,
                 engine: RewardEngine | None = None, cache_path: str | Path | None = None,
                 max_new_tokens: int | None = None, candidates: int | None = None,
                 trajectory_log: str | Path | None = None, threads: int | None = None,
                 observation: Literal["embedding", "index"] = "embedding",
                 invalid_action: Literal["raise", "penalize"] = "penalize", invalid_penalty: float = -1.0,
                 dense: bool = False, suite_seed: int = 0, render_mode: str | None = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.pool = resolve_examples(pool, "pool", seed=suite_seed)
        self.queries = resolve_examples(queries, split, seed=suite_seed, what="queries")
        if max_new_tokens is None:
            max_new_tokens = suite_max_new_tokens(queries) or 24
        require_answers(self.pool, "pool")
        if not 1 <= m <= len(self.pool):
            raise ValueError(f"m must be between 1 and the pool size {len(self.pool)}, got {m}")
        if candidates is not None and not m <= candidates:
            raise ValueError(f"candidates must be None or at least m={m}, got {candidates}")
        if invalid_action not in ("raise", "penalize"):
            raise ValueError(f"invalid_action must be 'raise' or 'penalize', got {invalid_action!r}")
        if observation not in ("embedding", "index"):
            raise ValueError(f"observation must be 'embedding' or 'index', got {observation!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.m, self.observation, self.dense = m, observation, dense
        self.invalid_action, self.invalid_penalty = invalid_action, float(invalid_penalty)
        self.render_mode = render_mode

        # What config() returns: the env's own arguments, plus the engine's when they were given by name.
        self._config: dict[str, Any] = {
            "m": m, "candidates": candidates, "threads": threads, "observation": observation,
            "invalid_action": invalid_action, "invalid_penalty": invalid_penalty, "dense": dense}
        self._engine_config: dict[str, Any] | None = None
        if engine is None and (reward is None or isinstance(reward, str)) and isinstance(encoder, str):
            self._engine_config = {"model": model, "adapter": adapter, "encoder": encoder, "reward": reward,
                                   "cache_path": resolve_cache_path(cache_path), "max_new_tokens": max_new_tokens}
        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        if isinstance(reward, str) and reward not in TRAIN_REWARDS:
            raise ValueError(f"reward must be None, 'pillow', 'loglik' or a callable, got {reward!r}")
        signal = SIGNAL_OF.get(reward, "generate") if isinstance(reward, str) else "generate"
        set_threads(threads)
        if cache_path is not None and engine is None:
            check_cache_path(Path(cache_path).expanduser())  # a bad cache path fails now, before any model load
        self._engine = engine
        if engine is None and (reward is None or isinstance(reward, str)) and isinstance(encoder, str):
            self._make_engine: Callable[[], RewardEngine] = lambda: shared_engine(
                model, adapter, encoder, max_new_tokens, resolve_cache_path(cache_path), signal,
                resolve_cache_path(trajectory_log))
        elif engine is None:
            self._make_engine = lambda: make_engine(
                shared_backend(model, adapter), self.encoder, reward=None if isinstance(reward, str) else reward,
                max_new_tokens=max_new_tokens, cache_path=resolve_cache_path(cache_path), signal=signal,
                log_path=resolve_cache_path(trajectory_log))

        k = len(self.pool)
        self.pool_embeddings = embed_examples(self.encoder, self.pool, with_output=True)
        self.query_embeddings = embed_examples(self.encoder, self.queries, with_output=False)
        self.candidates = None if candidates is None else min(candidates, k)
        self.shortlists: np.ndarray | None = None  # (Q, C) pool indices, nearest first
        if self.candidates is not None:
            similarity = self.query_embeddings @ embed_examples(self.encoder, self.pool, with_output=False).T
            self.shortlists = np.argsort(-similarity, axis=1, kind="stable")[:, :self.candidates]
        d = self.pool_embeddings.shape[1]
        self.action_space = spaces.Discrete(k)
        common = {"chosen_mask": spaces.MultiBinary(k), "step": spaces.Discrete(m + 1)}
        if observation == "embedding":
            self.observation_space = spaces.Dict({"query": spaces.Box(-1.0, 1.0, (d,), np.float32),
                                                  "chosen": spaces.Box(-1.0, 1.0, (m, d), np.float32), **common})
        else:
            self.observation_space = spaces.Dict({"query_index": spaces.Discrete(len(self.queries)), **common})

        self.query_index = 0
        self.chosen: list[int] = []
        self._invalid = 0
        self._step_invalid = False
        self._previous_score = 0.0
        self._last: ScoredGeneration | None = None

    @property
    def engine(self) -> RewardEngine:
        """The reward engine, built (and the LLM loaded) at the first step that needs a reward, so an
        env made to inspect spaces, masks or selections costs no model load."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a plain, picklable dict (records, not objects): ``PillowMatchEnv(**config)``
        rebuilds this env in another process (an RLlib env runner, say). An env given an ``engine``
        takes its model and reward settings from :meth:`RewardEngine.config`, which raises ``ValueError``
        for what cannot be named (a custom reward, a backend object). The trajectory log is left out, so
        copies do not append to one file by accident."""
        if self._engine_config is not None:
            engine = self._engine_config
        elif self._engine is not None:
            engine = self._engine.config()
        else:
            raise ValueError("this env was built from a reward callable or an Encoder object, which another "
                             "process cannot rebuild; pass model/reward/encoder by name")
        return {"pool": [e.to_dict() for e in self.pool], "queries": [e.to_dict() for e in self.queries],
                **self._config, **engine}

    def share_engine(self, other: PillowMatchEnv) -> None:
        """Use ``other``'s engine (and cache), built lazily when either first needs it."""
        self._engine, self._make_engine = None, lambda: other.engine

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        request = self.begin_reset(seed=seed, options=options)
        info = self.end_reset(self.engine.score([request])[0] if request is not None else None)
        return self.observe([self], single=True), info

    def step(self, action):
        request = self.begin_step(action)
        result = self.engine.score([request])[0] if request is not None else None
        reward, terminated, truncated, info = self.end_step(result)
        return self.observe([self], single=True), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = [f"query #{self.query_index}: {user_text(self.query)!r}  (reference: {self.query.output!r})"]
        for n, i in enumerate(self.chosen, 1):
            ex = self.pool[i]
            lines.append(f"  exemplar {n}/{self.m} = pool[{i}]: {user_text(ex)!r} -> {ex.output!r}")
        if self._last is not None:
            lines.append(f"  generation: {self._last.generation!r}  reward {self._last.reward:.3f}")
        return "\n".join(lines)

    # -- the two halves of a step, so a vector env can batch the LLM call between them ------------

    @property
    def query(self) -> Example:
        return self.queries[self.query_index]

    def action_masks(self) -> np.ndarray:
        """Valid actions (``True``): pool entries not chosen yet in this episode (and, with
        ``candidates``, on the query's shortlist); the sb3-contrib convention."""
        return self.action_mask_for(self.query_index, self.chosen)

    def action_mask_for(self, query_index: int, chosen: Sequence[int] = ()) -> np.ndarray:
        """The valid actions of the state (query ``query_index``, ``chosen`` so far), read without
        changing this env: what agents select by."""
        if self.shortlists is None:
            mask = np.ones(len(self.pool), dtype=bool)
        else:
            mask = np.zeros(len(self.pool), dtype=bool)
            mask[self.shortlists[query_index]] = True
        mask[list(chosen)] = False
        return mask

    def observation_for(self, query_index: int, chosen: Sequence[int] = ()) -> dict[str, Any]:
        """The observation of the state (query ``query_index``, ``chosen`` so far), as ``reset`` /
        ``step`` would return it there, without changing this env."""
        return self._observe(self, [(query_index, list(chosen))], single=True)

    def begin_reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Request | None:
        """Pick the query; in dense mode, return the zero-shot request whose score is the baseline."""
        super().reset(seed=seed)
        index = (options or {}).get("query_index")
        if index is None:
            index = int(self.np_random.integers(len(self.queries)))
        elif not _is_integer(index) or not 0 <= int(index) < len(self.queries):
            raise ValueError(f"options['query_index'] must be an integer in [0, {len(self.queries)}), got {index!r}")
        self.query_index, self.chosen, self._invalid, self._last = int(index), [], 0, None
        self._step_invalid = False
        return ([], self.query) if self.dense else None

    def end_reset(self, result: ScoredGeneration | None) -> dict[str, Any]:
        """Finish :meth:`begin_reset`; returns the info (build observations with :meth:`observe`)."""
        self._previous_score = result.reward if result is not None else 0.0
        return self._info()

    def begin_step(self, action: Any) -> Request | None:
        """Apply ``action``; return the (exemplars, query) request to score, or ``None`` if none is due."""
        if not _is_integer(action):
            raise ValueError(f"action must be an integer in Discrete({len(self.pool)}), got {action!r}")
        a = int(np.asarray(action).item())
        if len(self.chosen) == self.m:
            raise RuntimeError(f"step() after the episode ended ({self.m} exemplars chosen); call reset() first")
        if not 0 <= a < len(self.pool):
            raise ValueError(f"action {a} is outside the pool (Discrete({len(self.pool)}))")
        if not self.action_masks()[a]:
            if self.invalid_action == "raise":
                why = "already chosen in this episode" if a in self.chosen else \
                    f"not among the query's {self.candidates} candidates"
                raise ValueError(f"action {a}: pool entry {why} (chosen {self.chosen}); "
                                 "use action_masks() or invalid_action='penalize'")
            self._invalid += 1
            self._step_invalid = True
            return None
        self._step_invalid = False
        self.chosen.append(a)
        if len(self.chosen) == self.m or self.dense:
            return [self.pool[i] for i in self.chosen], self.query
        return None

    def end_step(self, result: ScoredGeneration | None) -> tuple[float, bool, bool, dict[str, Any]]:
        """Finish :meth:`begin_step` with the engine's result (if one was due): reward, terminated,
        truncated, info (build observations with :meth:`observe`)."""
        terminated = len(self.chosen) == self.m
        reward, extra = 0.0, {}
        if result is not None:
            self._last = result
            reward = result.reward - self._previous_score if self.dense else result.reward
            self._previous_score = result.reward
            extra = {"prompt": result.prompt, "generation": result.generation, "reference": result.reference,
                     "score": result.reward, "cached": result.cached, **dict(result.components)}
        truncated = False
        if self._step_invalid:
            reward = self.invalid_penalty
            truncated = self._invalid >= 2 * self.m
            extra["invalid_action"] = True
        return float(reward), terminated, truncated, self._info(**extra)

    # -- views -------------------------------------------------------------------------------------

    @staticmethod
    def observe(envs: Sequence[PillowMatchEnv], single: bool = False) -> dict[str, Any]:
        """Observations of same-configured envs, batched along axis 0 (or one env's, ``single``)."""
        return PillowMatchEnv._observe(envs[0], [(env.query_index, env.chosen) for env in envs], single)

    @staticmethod
    def _observe(first: PillowMatchEnv, states: Sequence[tuple[int, list[int]]], single: bool) -> dict[str, Any]:
        """Observations of (query index, chosen) states of ``first``'s pool and queries, batched."""
        n, k = len(states), len(first.pool)
        chosen_mask = np.zeros((n, k), dtype=np.int8)
        steps = np.empty(n, dtype=np.int64)
        queries = np.empty(n, dtype=np.int64)
        for row, (query_index, picked) in enumerate(states):
            chosen_mask[row, picked] = 1
            steps[row] = len(picked)
            queries[row] = query_index
        obs: dict[str, Any] = {"chosen_mask": chosen_mask, "step": steps}
        if first.observation == "embedding":
            chosen = np.zeros((n, first.m, first.pool_embeddings.shape[1]), dtype=np.float32)
            for row, (_, picked) in enumerate(states):
                chosen[row, :len(picked)] = first.pool_embeddings[picked]
            obs["query"] = first.query_embeddings[queries]
            obs["chosen"] = chosen
        else:
            obs["query_index"] = queries
        if single:
            return {key: (int(v[0]) if v.ndim == 1 else v[0]) for key, v in obs.items()}
        return obs

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"query_index": self.query_index, "action_mask": self.action_masks(),
                "chosen": list(self.chosen), "query_text": user_text(self.query),
                "chosen_text": [f"{user_text(self.pool[i])}\n{self.pool[i].output}" for i in self.chosen], **extra}
