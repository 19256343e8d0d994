"""Stable-Baselines3 (and sb3-contrib) algorithms on PillowMatch-v0, one batched LLM call per step.

:class:`SB3VecEnv` exposes our vector env as an SB3 ``VecEnv`` (no subprocesses, no model copies);
:class:`SB3Agent` trains any supported algorithm on it with SB3's own callbacks, logging and
save/load. The actor-critic algorithms (PPO, A2C, MaskablePPO) act through PILLOW's matching
network by default, initialised to kNN like every other learner here, so swapping the algorithm
compares algorithms, not architectures; ``policy="MultiInputPolicy"`` gives SB3's MLP instead.
DQN keeps SB3's Q-network: it regresses Q-values onto rewards in [-1, 1], and the kNN start's
logits (cosines / temperature, about 10) are no such values, so its first updates would discard
that start rather than refine it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from torch import nn
from tqdm import tqdm

from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples
from pillow_env.vector import PillowMatchVectorEnv

from .base import Agent, Budget, FitRecord, check_pool, greedy_rollout, unwrap_vector
from .matching import MatchingNetwork

__all__ = ["SB3VecEnv", "SB3Agent", "MatchingPolicy", "MaskableMatchingPolicy", "ALGORITHMS"]


def _algorithms() -> dict[str, type]:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN, "maskable_ppo": MaskablePPO}


ALGORITHMS = ("ppo", "a2c", "dqn", "maskable_ppo")


class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` over a :class:`PillowMatchVectorEnv`: a SAME_STEP view of its sub-envs (what
    SB3 expects: reset-on-done with ``terminal_observation``), leaving the caller's vector env in
    its own autoreset mode."""

    def __init__(self, venv: PillowMatchVectorEnv) -> None:
        self.venv = venv.with_autoreset_mode(AutoresetMode.SAME_STEP)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> dict[str, np.ndarray]:
        seeds = list(self._seeds) if any(s is not None for s in self._seeds) else None
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info: dict[str, Any] = {}
            if dones[i]:
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                final = infos["final_info"]
                if final.get("_score", np.zeros(self.num_envs, bool))[i]:
                    info["score"] = float(final["score"][i])
            out.append(info)
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def _targets(self, indices) -> list[PillowMatchEnv]:
        return [self.venv.envs[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(env, attr_name) for env in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for env in self._targets(indices):
            setattr(env, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(env, method_name)(*args, **kwargs) for env in self._targets(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))


def _step_cost(venv: PillowMatchVectorEnv) -> int:
    """The most LLM calls the next vector step can make: in sparse mode one per env about to pick its
    last exemplar; in dense mode every step is scored, and an episode's end also scores the next
    episode's zero-shot baseline (autoreset), so two per env."""
    if venv.envs[0].dense:
        return 2 * venv.num_envs
    return sum(len(env.chosen) == env.m - 1 for env in venv.envs)


def _batch_cost(venv: PillowMatchVectorEnv) -> int:
    """The most LLM calls one episode per env can make: one (sparse), or its ``m`` scored steps plus its
    own and the next episode's zero-shot baselines (dense)."""
    return venv.num_envs * ((venv.envs[0].m + 2) if venv.envs[0].dense else 1)


class _BudgetCallback(BaseCallback):
    """Stops training before a step that could exceed the budget (a cap, never exceeded); counts
    finished episodes and LLM calls; logs LLM calls and cache hits; tqdm bar."""

    def __init__(self, venv: PillowMatchVectorEnv, budget: Budget, progress: bool, desc: str) -> None:
        super().__init__()
        self.venv, self.engine, self.budget, self.progress, self.desc = venv, venv.engine, budget, progress, desc
        self.start_calls = self.engine.stats.llm_calls
        self.start_hits = self.engine.stats.cache_hits
        self.episodes = 0
        self.history: list[dict[str, float]] = []
        self._returns: list[float] = []

    def _on_training_start(self) -> None:
        total = self.budget.episodes or self.budget.llm_calls
        self.bar = tqdm(total=total, desc=self.desc, disable=not self.progress,
                        unit="episode" if self.budget.episodes else "LLM call")

    def _on_step(self) -> bool:
        llm_calls = self.engine.stats.llm_calls - self.start_calls
        self.episodes += int(np.sum(self.locals.get("dones", 0)))
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self._returns.append(float(info["episode"]["r"]))
        if len(self._returns) >= self.training_env.num_envs:
            reward = float(np.mean(self._returns))
            self.history.append({"episodes": self.episodes, "llm_calls": llm_calls, "reward": reward})
            self._returns = []
        self.logger.record("pillow/llm_calls", llm_calls)
        self.logger.record("pillow/cache_hits", self.engine.stats.cache_hits - self.start_hits)
        self.bar.n = min(self.episodes if self.budget.episodes else llm_calls, self.bar.total)
        self.bar.refresh()
        # Any env may end its episode on the next step (invalid actions truncate), each finished one may cost.
        return self.budget.affords(self.episodes + self.venv.num_envs, llm_calls + _step_cost(self.venv))

    def _on_training_end(self) -> None:
        self.bar.close()


class _MatchingFeatures(BaseFeaturesExtractor):
    """[query, mean of chosen embeddings, one-hot step]: the matching network's state input."""

    def __init__(self, observation_space: gym.spaces.Dict) -> None:
        d = observation_space["query"].shape[0]
        self.m = observation_space["chosen"].shape[0]
        super().__init__(observation_space, features_dim=2 * d + self.m + 1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        step = obs["step"].reshape(obs["query"].shape[0], -1)  # SB3 one-hot encodes Discrete observations
        n_chosen = step.argmax(-1, keepdim=True).clamp(min=1).float()
        return torch.cat([obs["query"], obs["chosen"].sum(1) / n_chosen, step], dim=-1)


class _MatchingHead(nn.Module):
    """The action head: :class:`~agents.matching.MatchingNetwork` (kNN-initialised) on the extracted state."""

    def __init__(self, prompts: torch.Tensor, m: int, hidden: int, temperature: float) -> None:
        super().__init__()
        self.net = MatchingNetwork(prompts, m, hidden, temperature, knn_init=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.score_states(features)


class _MatchingHeadMixin:
    """Replaces an actor-critic policy's action head by PILLOW's matching network, the same module and
    kNN initialisation REINFORCE and listwise start from (so the untrained greedy policy is kNN).

    Pass ``prompts`` (K, d pool embeddings) through ``policy_kwargs``; the critic stays a plain MLP.
    """

    def __init__(self, *args: Any, prompts: torch.Tensor, hidden: int = 256, temperature: float = 0.1,
                 **kwargs: Any) -> None:
        self._prompts, self._hidden, self._temperature = torch.as_tensor(prompts), hidden, temperature
        kwargs.setdefault("features_extractor_class", _MatchingFeatures)
        kwargs.setdefault("net_arch", {"pi": [], "vf": [64, 64]})
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        m = self.features_dim - 2 * self._prompts.shape[1] - 1
        self.action_net = _MatchingHead(self._prompts, m, self._hidden, self._temperature)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class MatchingPolicy(_MatchingHeadMixin, MultiInputActorCriticPolicy):
    """PPO / A2C policy with the matching network as action head."""


class MaskableMatchingPolicy(_MatchingHeadMixin, MaskableMultiInputActorCriticPolicy):
    """MaskablePPO policy with the matching network as action head."""


def _defaults(algo: str, num_envs: int, m: int) -> dict[str, Any]:
    """Settings sized for expensive steps: short rollouts of whole episodes, small batches.

    A2C updates with Adam at 1e-4, not SB3's RMSprop at 7e-4: RMSprop's first steps (its running
    square starts at zero) are about ten times the learning rate in every weight, which threw the
    kNN start away (0% of kNN's sets kept, -0.083 vs kNN on held-out training queries; Adam 1e-4:
    -0.008; benchmarks/results/swap-defaults/summary.md).
    """
    if algo in ("ppo", "maskable_ppo"):
        n_steps = 4 * m
        return {"n_steps": n_steps, "batch_size": min(64, n_steps * num_envs), "n_epochs": 4, "learning_rate": 3e-4,
                "ent_coef": 0.01, "gamma": 1.0, "gae_lambda": 1.0}
    if algo == "a2c":
        return {"n_steps": m, "learning_rate": 1e-4, "use_rms_prop": False, "ent_coef": 0.01, "gamma": 1.0}
    return {"learning_starts": 4 * num_envs * m, "buffer_size": 20_000, "batch_size": 32, "train_freq": 1,
            "gradient_steps": 1, "learning_rate": 1e-3, "target_update_interval": num_envs,
            "exploration_fraction": 0.3, "exploration_final_eps": 0.02, "gamma": 1.0}


POLICIES = ("matching", "MultiInputPolicy")
_SET_BY_AGENT = ("policy", "env", "seed", "verbose", "tensorboard_log", "_init_setup_model")


def _check_algo_kwargs(algo: str, algo_kwargs: dict[str, Any]) -> None:
    """Refuse ``algo_kwargs`` the algorithm does not take, that the agent sets itself, or whose JSON
    type cannot be its setting's (``{"n_steps": "x"}``), naming them, before any model loads."""
    if not isinstance(algo_kwargs, dict):
        raise ValueError(f"{algo}: algo_kwargs must be a dict of {algo.upper()} settings, got {algo_kwargs!r}")
    params = inspect.signature(_algorithms()[algo].__init__).parameters
    ours = sorted(set(algo_kwargs) & set(_SET_BY_AGENT))
    if ours:
        raise ValueError(f"{algo}: algo_kwargs may not set {', '.join(ours)} (the agent sets it; seed and policy "
                         "are the agent's own arguments)")
    unknown = sorted(set(algo_kwargs) - set(params))
    if unknown:
        takes = ", ".join(p for p in params if p not in ("self", *_SET_BY_AGENT))
        raise ValueError(f"{algo}: unknown algo_kwargs {', '.join(unknown)}; {algo.upper()} takes {takes}")
    defaults = _defaults(algo, 1, 1)
    for key, value in algo_kwargs.items():
        default = defaults.get(key, params[key].default)
        if default is inspect.Parameter.empty or default is None or value is None or callable(value):
            continue  # no default to compare with, or a schedule (learning_rate=lambda progress: ...)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        for kind, wanted, ok in ((bool, "true or false", isinstance(value, bool)),
                                 (int, "a whole number", number and isinstance(value, int)),
                                 (float, "a number", number), (str, "a string", isinstance(value, str))):
            if isinstance(default, kind):
                if not ok:
                    raise ValueError(f"{algo}: algo_kwargs {key} must be {wanted}, got {value!r}")
                break


class SB3Agent(Agent):
    """Any SB3 algorithm on PillowMatch-v0: ``"ppo"``, ``"a2c"``, ``"dqn"``, ``"maskable_ppo"``.

    Args:
        algo: the algorithm.
        policy: ``"matching"`` (:class:`MatchingPolicy`, kNN-initialised: the default of the actor-critic
            algorithms) or ``"MultiInputPolicy"`` (SB3's MLP for Dict observations; DQN's default).
        seed: SB3 seed.
        algo_kwargs: overrides of our defaults (see ``_defaults``), passed to the algorithm.
    """

    learns = True

    def __init__(self, algo: str = "ppo", policy: str | None = None, seed: int = 0,
                 algo_kwargs: dict[str, Any] | None = None, pool_fingerprint: str | None = None) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown SB3 algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
        policy = policy or ("MultiInputPolicy" if algo == "dqn" else "matching")
        if policy == "matching" and algo == "dqn":
            raise ValueError("policy='matching' needs an actor-critic algorithm (ppo, a2c, maskable_ppo), not dqn")
        if policy not in POLICIES:  # observations are a Dict: SB3's other policies refuse them
            raise ValueError(f"{algo}: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        _check_algo_kwargs(algo, algo_kwargs or {})
        self.algo, self.policy, self.seed = algo, policy, seed
        self.algo_kwargs = dict(algo_kwargs or {})
        self.pool_fingerprint = pool_fingerprint
        self.model = None
        self.history: list[dict[str, float]] = []

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.algo

    @classmethod
    def holds(cls, saved_name: str) -> bool:
        return saved_name in ALGORITHMS

    def config(self) -> dict[str, Any]:
        return {"algo": self.algo, "policy": self.policy, "seed": self.seed, "algo_kwargs": self.algo_kwargs,
                "pool_fingerprint": self.pool_fingerprint}

    def check_settings(self, *, num_envs: int, budget: Budget | None = None) -> None:
        if budget is not None:  # the smallest batch: one episode per env
            budget.check_batch(self.algo, num_envs, num_envs, f"one episode in each of {num_envs} envs")

    def prepare(self, env) -> None:
        if self.model is None:
            self.pool_fingerprint = check_pool(env, None)
        else:
            check_pool(env, self.pool_fingerprint)

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> FitRecord:
        venv = unwrap_vector(env, "SB3Agent.fit")
        if venv.envs[0].observation != "embedding":
            raise ValueError("SB3 agents need observation='embedding'")
        budget = budget or Budget(episodes=1000)
        self.check_settings(num_envs=venv.num_envs, budget=budget)
        budget.check_batch(self.algo, venv.num_envs, _batch_cost(venv), f"one episode in each of {venv.num_envs} envs")
        self.prepare(venv)
        m = venv.envs[0].m
        vec_env = VecMonitor(SB3VecEnv(venv))
        vec_env.seed(self.seed)
        policy: Any = self.policy
        settings = {**_defaults(self.algo, venv.num_envs, m), **self.algo_kwargs}
        if self.policy == "matching":
            policy = MaskableMatchingPolicy if self.algo == "maskable_ppo" else MatchingPolicy
            prompts = embed_examples(venv.envs[0].encoder, venv.envs[0].pool, with_output=False)
            settings["policy_kwargs"] = {**settings.get("policy_kwargs", {}), "prompts": torch.as_tensor(prompts)}
        if self.model is None:
            self.model = _algorithms()[self.algo](policy, vec_env, seed=self.seed, verbose=0,
                                                  tensorboard_log=None if tensorboard is None else str(tensorboard),
                                                  **settings)
        else:
            self.model.set_env(vec_env)
        # Our own logger: SB3's default one creates an empty /tmp/SB3-<time> folder when nothing is logged.
        self.model.set_logger(Logger(folder=None, output_formats=[]) if tensorboard is None
                              else configure_logger(0, str(tensorboard), self.algo))
        callback = _BudgetCallback(venv, budget, progress, self.algo)
        # Timesteps are a ceiling only; the callback stops at the budget.
        total = (budget.episodes or budget.llm_calls or 0) * m * 2 + venv.num_envs * m * 8
        self.model.learn(total_timesteps=total, callback=callback, tb_log_name=self.algo)
        self.history = callback.history
        return FitRecord(callback.episodes, venv.engine.stats.llm_calls - callback.start_calls, self.history)

    @torch.no_grad()
    def scores(self, obs: dict[str, Any]) -> np.ndarray:
        """A score per pool entry for one observation: action probabilities, or Q-values for DQN."""
        self.check_can_select()
        tensor, _ = self.model.policy.obs_to_tensor({k: np.asarray(v) for k, v in obs.items()})
        if self.algo == "dqn":
            return self.model.q_net(tensor)[0].cpu().numpy()
        return self.model.policy.get_distribution(tensor).distribution.logits[0].cpu().numpy()

    def check_can_select(self) -> None:
        if self.model is None:
            raise ValueError(f"{self.algo}: an untrained SB3 agent has no policy to select with; fit it, or load "
                             "a trained one (CLI: --load DIR, or select --agent-dir DIR, with --trust-pickle)")

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        self.check_can_select()
        self.prepare(env)
        return greedy_rollout(env, query_index, lambda state: self.scores(state.obs))

    def _save_weights(self, path: Path) -> None:
        if self.model is None:
            raise ValueError(f"{self.algo}: nothing to save: fit the agent first")
        self.model.save(path / "model.zip")

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        if not trusted:
            raise ValueError(f"{path / 'model.zip'} is an SB3 zip, which SB3 loads with pickle: loading it runs any "
                             "code it holds. Load only folders you made: pass trusted=True (CLI: --trust-pickle)")
        policy_class = MaskableMatchingPolicy if self.algo == "maskable_ppo" else MatchingPolicy
        custom = {"policy_class": policy_class} if self.policy == "matching" else None
        self.model = _algorithms()[self.algo].load(path / "model.zip", device="cpu", custom_objects=custom)
