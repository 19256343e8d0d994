"""PILLOW's matching network as an RLlib module, for PPO and APPO (the ``rllib_ppo`` agent's default).

The same :class:`~agents.matching.MatchingNetwork` and kNN initialisation as REINFORCE, listwise and
the SB3 actor-critics, so the untrained greedy policy picks kNN's exemplars and swapping the
algorithm compares algorithms, not architectures. The critic is a small MLP on the same state.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.torch_utils import FLOAT_MIN
from torch import nn

from .matching import MatchingNetwork

__all__ = ["MatchingPPOModule", "MatchingAPPOModule", "matching_module_spec"]


class MatchingPPOModule(TorchRLModule, ValueFunctionAPI):
    """PPO's module with the matching network as the policy.

    ``model_config``: ``prompts`` (K x d pool embeddings), ``hidden`` and ``temperature`` (the
    matching network's), ``vf_hiddens`` (the critic). The observation is
    :class:`~pillow_env.rllib.MaskedObservation`'s ``{"observations", "action_mask"}``; masked actions
    get the lowest logit, so they are never sampled and carry no probability in the loss.
    """

    def setup(self) -> None:
        space = self.observation_space
        if not (isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"observations", "action_mask"}):
            raise ValueError(f"{type(self).__name__} needs a Dict observation space with keys 'observations' "
                             f"and 'action_mask' (wrap the env in MaskedObservation), got {space}")
        config = self.model_config or {}
        if config.get("prompts") is None:
            raise ValueError(f"{type(self).__name__}: model_config needs 'prompts', the pool embeddings (K x d)")
        prompts = torch.as_tensor(np.asarray(config["prompts"]), dtype=torch.float32)
        (k, d), width = prompts.shape, space["observations"].shape[0]
        m = (width - d - k - 1) // (d + 1)  # observations = [query d, chosen m*d, chosen mask K, one-hot step m+1]
        if m < 1 or d + m * d + k + m + 1 != width or space["action_mask"].shape != (k,):
            raise ValueError(f"{type(self).__name__}: {k} x {d} prompts do not fit observations of width {width} "
                             f"and an action mask of shape {space['action_mask'].shape}")
        self.d, self.m = d, m
        self.net = MatchingNetwork(prompts, m, int(config.get("hidden", 256)), float(config.get("temperature", 0.1)),
                                   knn_init=True)
        layers: list[nn.Module] = []
        width = 2 * d + m + 1
        for h in config.get("vf_hiddens", (64, 64)):
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.vf = nn.Sequential(*layers, nn.Linear(width, 1))

    def _state(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The matching network's state ``[query, mean chosen, one-hot step]``, and the action mask."""
        obs = batch[Columns.OBS]
        flat, d, m = obs["observations"], self.d, self.m
        query, chosen, step = flat[:, :d], flat[:, d:d + m * d].reshape(-1, m, d), flat[:, -(m + 1):]
        n_chosen = step.argmax(-1, keepdim=True).clamp(min=1).float()
        return torch.cat([query, chosen.sum(1) / n_chosen, step], dim=-1), obs["action_mask"]

    @staticmethod
    def _logits(net: MatchingNetwork, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return net.score_states(state).masked_fill(mask <= 0, FLOAT_MIN)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        state, mask = self._state(batch)
        return {Columns.ACTION_DIST_INPUTS: self._logits(self.net, state, mask)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        state, mask = self._state(batch)
        return {Columns.ACTION_DIST_INPUTS: self._logits(self.net, state, mask), Columns.EMBEDDINGS: state}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        state = self._state(batch)[0] if embeddings is None else embeddings
        return self.vf(state).squeeze(-1)


class MatchingAPPOModule(MatchingPPOModule, TargetNetworkAPI):
    """:class:`MatchingPPOModule` plus the target policy behind APPO's importance ratios."""

    def make_target_networks(self) -> None:
        self._old_net = make_target_network(self.net)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.net, self._old_net)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        state, mask = self._state(batch)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._logits(self._old_net, state, mask)}


def matching_module_spec(prompts: np.ndarray | torch.Tensor, *, hidden: int = 256, temperature: float = 0.1,
                         vf_hiddens: tuple[int, ...] = (64, 64), observation_space=None, action_space=None,
                         algorithm: str = "PPO"):
    """The ``RLModuleSpec`` of the matching module for ``algorithm`` (PPO, IMPALA or APPO), to pass as
    ``rl_module_spec`` to :func:`pillow_env.rllib.ppo_config` / ``appo_config``."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    classes = {"PPO": MatchingPPOModule, "IMPALA": MatchingPPOModule, "APPO": MatchingAPPOModule}
    if algorithm not in classes:
        raise ValueError(f"matching_module_spec: algorithm must be one of {', '.join(classes)}, got {algorithm!r}")
    return RLModuleSpec(module_class=classes[algorithm], observation_space=observation_space,
                        action_space=action_space,
                        model_config={"prompts": np.asarray(prompts, dtype=np.float32).tolist(), "hidden": hidden,
                                      "temperature": temperature, "vf_hiddens": list(vf_hiddens)})
