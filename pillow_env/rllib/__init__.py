"""Ray RLlib glue (``pip install 'pillow-env[rllib]'``): ``register()`` then use ``ENV_NAME`` in any config.

Every env runner builds ``PillowMatch-v0`` from a plain ``env_config`` in its own process
(:func:`make_env`) and holds only the env: with an ``openai:`` model spec the runners share one
(or several) serving backends and one WAL SQLite reward cache. :class:`MaskedPPOModule` (PPO,
IMPALA) and :class:`MaskedAPPOModule` (APPO) mask invalid actions; :class:`PillowMetrics` reports
per-runner, cache and LLM-call counts.

    from pillow_env import rllib
    rllib.register()
    config = rllib.ppo_config(env_config, num_env_runners=2)   # or rllib.appo_config(...)
    algo = config.build_algo()
"""

from __future__ import annotations

from typing import Any

from .env import ENV_CONFIG_KEYS, ENV_NAME, MaskedObservation, flat_observation, make_env

__all__ = ["ENV_NAME", "ENV_CONFIG_KEYS", "MaskedObservation", "flat_observation", "make_env", "register",
           "module_spec", "ppo_config", "appo_config"]


def register(name: str = ENV_NAME) -> str:
    """``ray.tune.registry.register_env(name, make_env)``; returns the name."""
    from ray.tune.registry import register_env

    register_env(name, make_env)
    return name


def module_spec(hiddens: tuple[int, ...] = (256,), observation_space=None, action_space=None,
                algorithm: str = "PPO"):
    """The ``RLModuleSpec`` of the masked module for ``algorithm``: :class:`MaskedPPOModule` for PPO and
    IMPALA, :class:`MaskedAPPOModule` (with its target policy) for APPO; for training and for
    rebuilding a saved policy."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from .module import MaskedAPPOModule, MaskedPPOModule

    classes = {"PPO": MaskedPPOModule, "IMPALA": MaskedPPOModule, "APPO": MaskedAPPOModule}
    if algorithm not in classes:
        raise ValueError(f"module_spec: algorithm must be one of {', '.join(classes)}, got {algorithm!r}")
    return RLModuleSpec(module_class=classes[algorithm], observation_space=observation_space,
                        action_space=action_space,
                        model_config={"fcnet_hiddens": list(hiddens), "vf_share_layers": False})


def _pillow_setup(config, env_config: dict[str, Any], num_env_runners: int, hiddens: tuple[int, ...],
                  algorithm: str, seed: int, rl_module_spec=None):
    """What every config here shares: the registered env, one env and one CPU per runner, the module
    (``rl_module_spec``, default the masked MLP for ``algorithm``), the metrics callback, the seed."""
    from .module import PillowMetrics

    return (config
            .environment(register(), env_config=env_config)
            .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=1, num_cpus_per_env_runner=1)
            .rl_module(rl_module_spec=rl_module_spec or module_spec(hiddens, algorithm=algorithm))
            .callbacks(PillowMetrics)
            .debugging(seed=seed, log_level="WARN"))


def ppo_config(env_config: dict[str, Any], *, num_env_runners: int = 2, train_batch_size: int = 256,
               minibatch_size: int = 64, num_epochs: int = 4, lr: float = 3e-4, entropy_coeff: float = 0.01,
               hiddens: tuple[int, ...] = (256,), seed: int = 0, rl_module_spec=None):
    """A ``PPOConfig`` for the registered env: masked module, metrics callback, undiscounted returns
    (an episode is ``m`` steps and only the last one is rewarded), one CPU per env runner.

    ``rl_module_spec`` replaces the masked MLP (``hiddens``): e.g.
    ``agents.rllib_matching.matching_module_spec(prompts)`` (``prompts``: the pool's input
    embeddings), the kNN-initialised matching network the ``rllib_ppo`` agent uses by default."""
    from ray.rllib.algorithms.ppo import PPOConfig

    return (_pillow_setup(PPOConfig(), env_config, num_env_runners, hiddens, "PPO", seed, rl_module_spec)
            .env_runners(rollout_fragment_length="auto")
            .training(train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size,
                      num_epochs=num_epochs, lr=lr, entropy_coeff=entropy_coeff, gamma=1.0, lambda_=1.0))


def appo_config(env_config: dict[str, Any], *, num_env_runners: int = 2, train_batch_size: int = 256,
                lr: float = 3e-4, entropy_coeff: float = 0.01, hiddens: tuple[int, ...] = (256,),
                seed: int = 0, rl_module_spec=None):
    """An ``APPOConfig`` for the registered env, set up like :func:`ppo_config`: APPO learns while the
    runners keep sampling (V-trace corrects for the lag), which suits an env whose steps wait on an LLM."""
    from ray.rllib.algorithms.appo import APPOConfig

    return (_pillow_setup(APPOConfig(), env_config, num_env_runners, hiddens, "APPO", seed, rl_module_spec)
            .learners(num_learners=0)  # the tiny network learns in the driver; the CPUs go to the runners
            .training(train_batch_size_per_learner=train_batch_size, lr=lr, entropy_coeff=entropy_coeff,
                      gamma=1.0, lambda_=1.0))
