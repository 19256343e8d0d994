"""RLlib's PPO on PillowMatch-v0: env runners in their own processes, one shared serving backend.

``fit`` builds the env config from the training env (``PillowMatchEnv.config()``), optionally pointing
the runners at another ``model`` (an ``openai:`` server: then no runner holds weights), trains PPO
until the budget is spent, and keeps the policy's weights. The policy is PILLOW's matching network,
kNN-initialised like every other learner here (:mod:`agents.rllib_matching`); ``policy="mlp"`` gives
RLlib's default MLP with action masking instead. Selection runs the policy greedily in this
process, without Ray workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples

from .base import Agent, Budget, FitRecord, check_pool, first_env, greedy_rollout, load_history, save_history, summary_writer

__all__ = ["RLlibPPOAgent"]

WEIGHTS_NAME = "rllib_module.safetensors"


def _import_ray():
    try:
        import ray
        import ray.rllib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the rllib_ppo agent needs Ray RLlib: pip install 'pillow-env[rllib]' ({err})") from None
    return ray


class RLlibPPOAgent(Agent):
    """PPO from Ray RLlib, its rollouts spread over ``num_env_runners`` processes.

    Args:
        policy: ``"matching"`` (the kNN-initialised matching network, :mod:`agents.rllib_matching`) or
            ``"mlp"`` (RLlib's default MLP of width ``hiddens``, masked).
        num_env_runners: RLlib env runners (processes), one CPU each.
        model: the ``model`` string the runners use (e.g. ``openai:http://host:8000/v1#NAME``: all
            runners share that server), or a list of them (serving replicas, spread over the runners
            round-robin); ``None`` keeps the training env's own (an in-process model is then loaded
            once per runner).
        train_batch_size, minibatch_size, num_epochs, lr, entropy_coeff: PPO settings
            (``train_batch_size`` counts env steps; an episode is ``m`` steps). The batch sizes were
            chosen on held-out training queries (benchmarks/results/swap-defaults/summary.md): 64 / 32
            (+0.008 vs kNN there) over 128 / 32 (-0.002) and 256 / 64 (-0.012).
        hiddens: the MLP policy's layers (``policy="mlp"``).
        num_cpus: CPUs for ``ray.init`` when this agent starts Ray (``None``: Ray's default); a running
            Ray (``ray.init`` before ``fit``, or a cluster address) is used as it is.
        trajectory_dir: each runner appends its scored episodes to a JSONL file there.
        seed: RLlib's seed.

    The :class:`~agents.base.Budget` counts episodes and LLM calls over all runners; training stops
    before the iteration that would exceed it.
    """

    name = "rllib_ppo"
    learns = True
    rollouts_in_process = False

    def __init__(self, policy: str = "matching", num_env_runners: int = 2, model: str | list[str] | None = None, train_batch_size: int = 64,
                 minibatch_size: int = 32, num_epochs: int = 4, lr: float = 3e-4, entropy_coeff: float = 0.01,
                 hiddens: tuple[int, ...] | list[int] = (256,), num_cpus: int | None = None,
                 trajectory_dir: str | None = None, seed: int = 0, pool_fingerprint: str | None = None) -> None:
        if policy not in ("matching", "mlp"):
            raise ValueError(f"RLlibPPOAgent: policy must be 'matching' or 'mlp', got {policy!r}")
        if num_env_runners < 1:
            raise ValueError(f"RLlibPPOAgent: num_env_runners must be >= 1, got {num_env_runners}")
        if not 1 <= minibatch_size <= train_batch_size:
            raise ValueError(f"RLlibPPOAgent: need 1 <= minibatch_size <= train_batch_size, got {minibatch_size} "
                             f"and {train_batch_size}")
        self.policy, self.num_env_runners, self.model = policy, num_env_runners, model
        self.train_batch_size, self.minibatch_size, self.num_epochs = train_batch_size, minibatch_size, num_epochs
        self.lr, self.entropy_coeff, self.hiddens = lr, entropy_coeff, tuple(hiddens)
        self.num_cpus, self.trajectory_dir, self.seed = num_cpus, trajectory_dir, seed
        self.pool_fingerprint = pool_fingerprint
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._module: Any = None

    def config(self) -> dict[str, Any]:
        return {"policy": self.policy, "num_env_runners": self.num_env_runners, "model": self.model,
                "train_batch_size": self.train_batch_size, "minibatch_size": self.minibatch_size,
                "num_epochs": self.num_epochs, "lr": self.lr, "entropy_coeff": self.entropy_coeff,
                "hiddens": list(self.hiddens), "num_cpus": self.num_cpus, "trajectory_dir": self.trajectory_dir,
                "seed": self.seed, "pool_fingerprint": self.pool_fingerprint}

    def check_settings(self, *, num_envs: int, budget: Budget | None = None) -> None:
        _import_ray()  # no Ray: say so before any model load

    def _module_spec(self, env: PillowMatchEnv, observation_space=None, action_space=None):
        """The policy's ``RLModuleSpec``; a saved matching network carries its own pool embeddings."""
        if self.policy == "mlp":
            from pillow_env.rllib import module_spec

            return module_spec(self.hiddens, observation_space, action_space)
        from .rllib_matching import matching_module_spec

        prompts = (self.state["net.prompts"] if self.state is not None and "net.prompts" in self.state
                   else embed_examples(env.encoder, env.pool, with_output=False))
        return matching_module_spec(prompts, observation_space=observation_space, action_space=action_space)

    def _ppo_config(self, env: PillowMatchEnv, env_config: dict[str, Any]):
        from pillow_env.rllib import ppo_config

        return ppo_config(env_config, num_env_runners=self.num_env_runners, train_batch_size=self.train_batch_size,
                          minibatch_size=self.minibatch_size, num_epochs=self.num_epochs, lr=self.lr,
                          entropy_coeff=self.entropy_coeff, hiddens=self.hiddens, seed=self.seed,
                          rl_module_spec=self._module_spec(env))

    # -- training --------------------------------------------------------------------------------

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> FitRecord:
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_EPISODES_LIFETIME

        ray = _import_ray()
        single = first_env(env)
        if single.observation != "embedding":
            raise ValueError("RLlibPPOAgent needs observation='embedding'")
        budget = budget or Budget(episodes=2000)
        self.pool_fingerprint = check_pool(single, self.pool_fingerprint if self.state is not None else None)
        env_config = single.config()
        if self.model is not None:
            env_config["model"], env_config["adapter"] = self.model, None
        if self.trajectory_dir is not None:
            env_config["trajectory_dir"] = str(Path(self.trajectory_dir).resolve())

        # An iteration samples train_batch_size steps, a fragment of ceil(train_batch_size / runners) per runner
        # ("auto" fragments); an episode is m steps (the module masks invalid actions), so a runner finishes
        # at most ceil(fragment / m) episodes per iteration, each scored once.
        fragment = -(-self.train_batch_size // self.num_env_runners)
        per_iteration = self.num_env_runners * -(-fragment // single.m)

        def affordable(episodes: int, calls: int) -> bool:  # another iteration stays within the budget
            return budget.affords(episodes + per_iteration, calls + per_iteration)

        if not affordable(0, 0):
            raise ValueError(f"rllib_ppo: one PPO iteration finishes up to {per_iteration} episodes "
                             f"(train_batch_size={self.train_batch_size} steps over {self.num_env_runners} runners, "
                             f"m={single.m} steps each), "
                             f"more than the budget {budget}; lower train_batch_size")

        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            algo = self._ppo_config(single, env_config).build_algo()
        except BaseException:
            if started:
                ray.shutdown()
            raise
        if self.state is not None:  # continue from loaded weights
            algo.get_module().set_state(self.state)
            algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group)
        writer = summary_writer(tensorboard)
        episodes = llm_calls = 0
        self.history = []
        bar = tqdm(total=budget.episodes or budget.llm_calls, desc="rllib_ppo", unit="episode",
                   disable=not progress)
        try:
            while affordable(episodes, llm_calls):
                result = algo.train()
                runners = result[ENV_RUNNER_RESULTS]
                pillow = runners.get("pillow", {})
                done = int(runners.get(NUM_EPISODES_LIFETIME, 0))
                calls = int(pillow.get("llm_calls", 0))
                bar.update((done if budget.episodes else calls) - (episodes if budget.episodes else llm_calls))
                episodes, llm_calls = done, calls
                point = {"episodes": episodes, "llm_calls": llm_calls,
                         "mean_reward": float(runners.get(EPISODE_RETURN_MEAN, float("nan"))),
                         "episodes_per_runner": {k: int(v) for k, v in pillow.items() if k.startswith("episodes_")},
                         "peak_rss_mb": {k: float(v) for k, v in pillow.items() if k.startswith("peak_rss_mb_")},
                         "cached": int(pillow.get("cached", 0))}
                self.history.append(point)
                if writer is not None:
                    writer.add_scalar("rllib_ppo/mean_reward", point["mean_reward"], episodes)
                    writer.add_scalar("rllib_ppo/llm_calls", llm_calls, episodes)
            self.state = {k: torch.as_tensor(np.asarray(v)).contiguous()
                          for k, v in algo.get_module().get_state().items()}
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            algo.stop()
            if started:
                ray.shutdown()
        self._module = None
        last = self.history[-1] if self.history else {}
        return FitRecord(episodes, llm_calls, [{"episodes": p["episodes"], "reward": p["mean_reward"]} for p in self.history],
                         {"cached": last.get("cached", 0), "episodes_per_runner": last.get("episodes_per_runner", {}),
                          "peak_rss_mb": last.get("peak_rss_mb", {})})

    # -- selection -------------------------------------------------------------------------------

    def prepare(self, env) -> None:
        check_pool(env, self.pool_fingerprint)

    def check_can_select(self) -> None:
        if self.state is None:
            raise ValueError("rllib_ppo: an untrained agent has no policy to select with; fit or load it first")

    def _policy(self, env: PillowMatchEnv):
        """The trained module, rebuilt in this process for ``env``'s spaces (no Ray workers)."""
        self.check_can_select()
        if self._module is None:
            _import_ray()
            from pillow_env.rllib import MaskedObservation

            space = MaskedObservation(env).observation_space
            module = self._module_spec(env, space, env.action_space).build()
            module.set_state(self.state)
            self._module = module.eval()
        return self._module

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        from ray.rllib.core.columns import Columns

        from pillow_env.rllib import flat_observation

        self.prepare(env)
        module = self._policy(env)

        @torch.no_grad()
        def scores(state) -> np.ndarray:
            flat = flat_observation(env, state.obs, state.mask)
            batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in flat.items()}}
            return module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS][0].numpy()

        return greedy_rollout(env, query_index, scores)

    # -- persistence -----------------------------------------------------------------------------

    def _save_weights(self, path: Path) -> None:
        if self.state is None:
            raise ValueError("rllib_ppo: nothing to save: fit the agent first")
        save_file(self.state, str(path / WEIGHTS_NAME))
        save_history(path, self.history)

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        file = path / WEIGHTS_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} (not a saved rllib_ppo agent)")
        state = load_file(str(file))
        if ("net.prompts" in state) != (self.policy == "matching"):
            saved = "the matching network" if "net.prompts" in state else "an MLP (no 'net.prompts' key)"
            raise ValueError(f"{file} holds {saved}, but agent.json says policy={self.policy!r}")
        self.state = state
        self.history = load_history(path)
