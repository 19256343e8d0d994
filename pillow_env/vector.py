"""The native vector env: N ``PillowMatchEnv`` episodes, one batched LLM call per step.

The sub-envs share one reward engine; each step applies every action, sends every due request to
the engine at once (deduplicated, cached, generated as batches), then finishes every sub-env. So
rewards are exactly those of N separate envs with the same seeds, at a fraction of the cost.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .env import PillowMatchEnv

__all__ = ["PillowMatchVectorEnv"]


class PillowMatchVectorEnv(VectorEnv):
    """``gym.make_vec("PillowMatch-v0", num_envs=N, vectorization_mode="vector_entry_point")``.

    Args:
        num_envs: number of parallel episodes.
        autoreset_mode: Gymnasium's ``NEXT_STEP`` (default: the step after an episode ends resets
            that sub-env and ignores its action) or ``SAME_STEP`` (reset at once, the final
            observation and info in ``info["final_obs"]`` / ``info["final_info"]``; what SB3 expects).
        **env_kwargs: passed to every :class:`PillowMatchEnv` (pool, queries, model, m, ...).
    """

    def __init__(self, num_envs: int = 1, *, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 **env_kwargs: Any) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        if self.autoreset_mode == AutoresetMode.DISABLED:
            raise ValueError("autoreset_mode DISABLED is not supported; use NEXT_STEP or SAME_STEP")
        env_kwargs.pop("max_episode_steps", None)  # gymnasium passes it; episodes are bounded by m already
        first = PillowMatchEnv(**env_kwargs)
        self.envs = [first] + [PillowMatchEnv(**env_kwargs) for _ in range(num_envs - 1)]
        for env in self.envs[1:]:
            env.share_engine(first)  # one engine (and cache) even for custom rewards; built lazily
        self.num_envs = num_envs
        self.metadata = {**PillowMatchEnv.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, num_envs)
        self.action_space = batch_space(first.action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed if isinstance(seed, int) or seed is None else None)
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)] if not isinstance(seed, list) \
            else seed
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset: {len(seeds)} seeds for {self.num_envs} envs")
        options = dict(options or {})
        indices = options.pop("query_index", None)
        if indices is not None and np.ndim(indices) == 0:
            indices = [indices] * self.num_envs
        requests = {}
        for i, env in enumerate(self.envs):
            sub_options = {**options, **({} if indices is None else {"query_index": indices[i]})}
            request = env.begin_reset(seed=seeds[i], options=sub_options)
            if request is not None:
                requests[i] = request
        results = self._score(requests)
        infos = [env.end_reset(results.get(i)) for i, env in enumerate(self.envs)]
        self._needs_reset[:] = False
        return PillowMatchEnv.observe(self.envs), merge_infos(infos)

    def step(self, actions):
        actions = np.asarray(actions).reshape(self.num_envs)
        resetting = set(np.flatnonzero(self._needs_reset)) if self.autoreset_mode == AutoresetMode.NEXT_STEP \
            else set()
        requests: dict[int, Any] = {}
        for i, env in enumerate(self.envs):
            request = env.begin_reset() if i in resetting else env.begin_step(actions[i])
            if request is not None:
                requests[i] = request
        results = self._score(requests)

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = []
        for i, env in enumerate(self.envs):
            if i in resetting:
                infos.append(env.end_reset(results.get(i)))
                continue
            rewards[i], terminated[i], truncated[i], info = env.end_step(results.get(i))
            if self.autoreset_mode == AutoresetMode.SAME_STEP and (terminated[i] or truncated[i]):
                final_obs = PillowMatchEnv.observe([env], single=True)
                _, reset_info = env.reset()  # dense mode: one extra (cached) zero-shot lookup
                info = {**reset_info, "final_obs": final_obs, "final_info": info}
            infos.append(info)
        self._needs_reset = terminated | truncated
        return PillowMatchEnv.observe(self.envs), rewards, terminated, truncated, merge_infos(infos)

    def with_autoreset_mode(self, mode: AutoresetMode) -> PillowMatchVectorEnv:
        """A vector env over the same sub-envs (and engine) stepping in ``mode``; this one keeps its own."""
        if mode == self.autoreset_mode:
            return self
        view = copy.copy(self)
        view.autoreset_mode = AutoresetMode(mode)
        view.metadata = {**self.metadata, "autoreset_mode": view.autoreset_mode}
        view._needs_reset = self._needs_reset.copy()
        return view

    @property
    def engine(self):
        return self.envs[0].engine

    def action_masks(self) -> np.ndarray:
        """(num_envs, K) boolean mask of valid actions, as sb3-contrib's MaskablePPO expects."""
        return np.stack([env.action_masks() for env in self.envs])

    def render(self) -> tuple[str | None, ...]:
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    def _score(self, requests: dict[int, Any]) -> dict[int, Any]:
        """All due requests of this step as one engine call."""
        return dict(zip(requests, self.engine.score(list(requests.values())))) if requests else {}


def merge_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-env info dicts -> Gymnasium's vector layout: ``info[key]`` batched, ``info["_" + key]`` present.

    Same layout as ``VectorEnv._add_info`` (``final_obs`` an object array, nested dicts merged
    recursively), built once per key instead of once per key and env.
    """
    n = len(infos)
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for info in infos for k in info):
        present = np.array([key in info for info in infos])
        values = [info.get(key) for info in infos]
        sample = values[int(np.argmax(present))]
        if key != "final_obs" and isinstance(sample, dict):
            array: Any = merge_infos([v if isinstance(v, dict) else {} for v in values])
        elif key != "final_obs" and isinstance(sample, np.ndarray):
            array = np.zeros((n, *sample.shape), dtype=sample.dtype)
            for i in np.flatnonzero(present):
                array[i] = values[i]
        elif key != "final_obs" and isinstance(sample, (bool, int, float, np.number)):
            array = np.zeros(n, dtype=type(sample))
            array[present] = [v for v in values if v is not None]
        else:
            array = np.empty(n, dtype=object)
            for i in np.flatnonzero(present):
                array[i] = values[i]
        merged[key], merged["_" + key] = array, present
    return merged
