"""PillowMatch-v0 as an RLlib env: built from a plain ``env_config`` in each env runner's own process.

Nothing here imports Ray, so the wrapper is usable (and tested) without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..env import PillowMatchEnv

__all__ = ["ENV_NAME", "MaskedObservation", "make_env", "ENV_CONFIG_KEYS"]

ENV_NAME = "PillowMatch-rllib-v0"
# What an env_config may hold: PillowMatchEnv's own arguments plus ``trajectory_dir``.
ENV_CONFIG_KEYS = ("pool", "queries", "split", "suite_seed", "m", "model", "adapter", "encoder", "reward",
                   "cache_path", "max_new_tokens", "candidates", "threads", "observation", "invalid_action",
                   "invalid_penalty", "dense", "trajectory_dir")


class MaskedObservation(gym.ObservationWrapper):
    """The ``Dict`` observation RLlib's action-masking modules read: ``{"observations", "action_mask"}``.

    | key | space | meaning |
    |---|---|---|
    | ``observations`` | ``Box(-1, 1, (d + m*d + K + m + 1,))`` | query, chosen embeddings, chosen mask, one-hot step |
    | ``action_mask`` | ``Box(0, 1, (K,))`` | 1 for valid actions (``PillowMatchEnv.action_masks()``) |

    Flattening here (not in an env-to-module connector) keeps the mask a separate key, so the module
    can push invalid actions' logits down instead of learning the env's penalty.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, PillowMatchEnv) or base.observation != "embedding":
            raise TypeError("MaskedObservation wraps a PillowMatchEnv with observation='embedding'")
        self.base = base
        k, m, d = len(base.pool), base.m, base.pool_embeddings.shape[1]
        self.observation_space = spaces.Dict({
            "observations": spaces.Box(-1.0, 1.0, (d + m * d + k + m + 1,), np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (k,), np.float32)})

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        return flat_observation(self.base, observation)


def flat_observation(env: PillowMatchEnv, observation: Mapping[str, Any],
                     action_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One env's observation in :class:`MaskedObservation`'s form (also used to select without Ray);
    ``action_mask``: that state's valid actions (default: the env's current ones)."""
    step = np.zeros(env.m + 1, dtype=np.float32)
    step[int(observation["step"])] = 1.0
    flat = np.concatenate([np.asarray(observation["query"], np.float32).ravel(),
                           np.asarray(observation["chosen"], np.float32).ravel(),
                           np.asarray(observation["chosen_mask"], np.float32).ravel(), step])
    mask = env.action_masks() if action_mask is None else action_mask
    return {"observations": flat, "action_mask": mask.astype(np.float32)}


def make_env(env_config: Mapping[str, Any]) -> MaskedObservation:
    """RLlib's env creator: ``env_config`` holds ``PillowMatchEnv`` arguments (``PillowMatchEnv.config()``
    gives them for an existing env) and optionally ``trajectory_dir``: each runner then appends its
    scored episodes to ``runner-<worker>-<vector>.jsonl`` there. ``model`` may be a list of model
    strings, serving replicas of one model: env runner ``i`` (1-based) uses entry ``(i - 1) mod n``.
    Replicas of the same weights share cache entries (the key names the served model, not the URL).

    The LLM is not loaded here: the env builds its engine at its first scored step, in the runner's own
    process. With an ``openai:`` model spec every runner talks to the same server(s) and holds no weights.
    """
    unknown = sorted(set(env_config) - set(ENV_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"env_config: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                         f"{', '.join(ENV_CONFIG_KEYS)}")
    kwargs = {k: v for k, v in env_config.items() if k != "trajectory_dir"}
    worker, vector = getattr(env_config, "worker_index", 0), getattr(env_config, "vector_index", 0)
    model = kwargs.get("model")
    if isinstance(model, (list, tuple)):  # serving replicas: runner i talks to replica (i - 1) mod n
        if not model or not all(isinstance(m, str) for m in model):
            raise ValueError(f"env_config['model']: a model string or a non-empty list of them, got {model!r}")
        kwargs["model"] = model[max(worker - 1, 0) % len(model)]
    if env_config.get("trajectory_dir"):
        kwargs["trajectory_log"] = Path(env_config["trajectory_dir"]) / f"runner-{worker}-{vector}.jsonl"
    return MaskedObservation(PillowMatchEnv(**kwargs))
