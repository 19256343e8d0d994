"""What RLlib runs: PPO's and APPO's default modules with action masking, and per-episode metrics
from the env."""

from __future__ import annotations

import os
import resource
from typing import Any

import gymnasium as gym
import torch
from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS
from ray.rllib.utils.torch_utils import FLOAT_MIN

__all__ = ["MaskedAPPOModule", "MaskedPPOModule", "PillowMetrics"]


class _ActionMasking:
    """Action masking for RLlib's default actor-critic modules: the networks read ``obs["observations"]``
    and actions whose ``obs["action_mask"]`` is 0 get the lowest logit, so they are never sampled and
    carry no probability in the loss (nor in a target policy's logits, for APPO's importance ratios).

    Raises ``ValueError`` on any other observation space (see :class:`~pillow_env.rllib.env.MaskedObservation`).
    """

    def __init__(self, *, observation_space: gym.Space | None = None, **kwargs: Any) -> None:
        if not (isinstance(observation_space, gym.spaces.Dict)
                and set(observation_space.spaces) == {"observations", "action_mask"}):
            raise ValueError(f"{type(self).__name__} needs a Dict observation space with keys 'observations' "
                             "and 'action_mask' (wrap the env in MaskedObservation), "
                             f"got {observation_space}")
        # The networks are built for the flat observations; the module still declares the Dict it reads.
        super().__init__(observation_space=observation_space["observations"], **kwargs)
        self.observation_space = observation_space

    @staticmethod
    def _split(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, dict):  # already split (e.g. a value pass on a prepared batch)
            return batch, None
        return {**batch, Columns.OBS: obs["observations"]}, obs["action_mask"]

    @staticmethod
    def _mask(out: dict[str, Any], mask: torch.Tensor | None, key: str = Columns.ACTION_DIST_INPUTS
              ) -> dict[str, Any]:
        if mask is not None:
            out[key] = out[key].masked_fill(mask <= 0, FLOAT_MIN)
        return out

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        inner, mask = self._split(batch)
        return self._mask(super()._forward(inner, **kwargs), mask)

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        inner, mask = self._split(batch)
        return self._mask(super()._forward_train(inner, **kwargs), mask)

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        inner, _ = self._split(batch)
        return super().compute_values(inner, embeddings)


class MaskedPPOModule(_ActionMasking, DefaultPPOTorchRLModule):
    """PPO's default actor-critic with action masking (PPO, and IMPALA, which uses the same module)."""


class MaskedAPPOModule(_ActionMasking, DefaultAPPOTorchRLModule):
    """APPO's default actor-critic (with its target policy) with action masking."""

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        inner, mask = self._split(batch)
        return self._mask(super().forward_target(inner), mask, TARGET_NETWORK_ACTION_DIST_INPUTS)


class PillowMetrics(RLlibCallback):
    """Per finished episode, in the results under ``env_runners/pillow``: episodes per runner (by
    worker index and pid), each runner's peak resident memory, episodes answered from the cache, and
    episodes the LLM scored."""

    def on_episode_end(self, *, episode: Any, env_runner: Any = None, metrics_logger: Any = None,
                       **kwargs: Any) -> None:
        if metrics_logger is None:
            return
        info = episode.get_infos(-1)
        worker = getattr(env_runner, "worker_index", 0)
        metrics_logger.log_value(("pillow", f"episodes_runner_{worker}"), 1, reduce="lifetime_sum")
        metrics_logger.log_value(("pillow", "runner_pids", str(os.getpid())), 1, reduce="lifetime_sum")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        metrics_logger.log_value(("pillow", f"peak_rss_mb_runner_{worker}"), peak_mb, reduce="max")
        if "score" in info:  # a scored episode (not one truncated for invalid actions)
            metrics_logger.log_value(("pillow", "scored"), 1, reduce="lifetime_sum")
            metrics_logger.log_value(("pillow", "cached"), int(bool(info["cached"])), reduce="lifetime_sum")
            metrics_logger.log_value(("pillow", "llm_calls"), int(not info["cached"]), reduce="lifetime_sum")
