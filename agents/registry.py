"""One word per agent: ``make_agent("ppo")``, ``make_agent("knn")``, ..."""

from __future__ import annotations

from collections.abc import Callable
import inspect
from functools import partial
from pathlib import Path
from typing import Any

from .base import Agent, check_arguments, read_saved
from .distill import DistillAgent
from .baselines import BM25Agent, DPPAgent, KNNAgent, MMRAgent, RandomAgent, ZeroShotAgent
from .listwise import ListwiseAgent
from .reinforce import ReinforceAgent
from .rllib_ppo import RLlibPPOAgent
from .sb3 import ALGORITHMS, SB3Agent

__all__ = ["AGENTS", "check_agent_kwargs", "make_agent", "make_seeded_agent", "agent_names", "load_agent"]

AGENTS: dict[str, Callable[..., Agent]] = {
    "zero_shot": ZeroShotAgent,
    "random": RandomAgent,
    "knn": KNNAgent,
    "bm25": BM25Agent,
    "mmr": MMRAgent,
    "dpp": DPPAgent,
    "reinforce": ReinforceAgent,
    "listwise": ListwiseAgent,
    "distill": DistillAgent,
    "rllib_ppo": RLlibPPOAgent,
    **{algo: partial(SB3Agent, algo=algo) for algo in ALGORITHMS},
}


def agent_names() -> list[str]:
    return list(AGENTS)


def make_agent(name: str, **kwargs: Any) -> Agent:
    """Build a registered agent by name; unknown names list the valid ones, and arguments are checked
    (:func:`check_agent_kwargs`) before anything is built."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(AGENTS)}")
    fixed = sorted(set(kwargs) & set(getattr(AGENTS[name], "keywords", {})))
    if fixed:  # e.g. {"ppo": {"algo": "dqn"}} would be a DQN saved and reported as "ppo"
        key = fixed[0]
        raise ValueError(f"agent {name!r}: {key!r} is fixed by the agent's name ({key}={AGENTS[name].keywords[key]!r}); "
                         f"to run another, name that agent (e.g. --agents {kwargs[key]})")
    check_arguments(AGENTS[name], kwargs, f"agent {name!r}")
    return AGENTS[name](**kwargs)


def check_agent_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line naming the agent and the argument) if ``make_agent(name, **kwargs)``
    would fail: an unknown agent or argument, a type unlike the default's, an argument fixed by the
    name (``algo`` of ``ppo``), a value the constructor refuses (SB3's ``policy``, ``algo_kwargs``
    against the algorithm's signature). Builds the agent only (no model, env or LLM), so callers check
    every agent's settings before any long work."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"agent {name!r}: settings must be a dict of arguments, got {kwargs!r}")
    try:
        make_agent(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"agent {name!r}: {err}") from None


def load_agent(path: str | Path, *, trusted: bool = False) -> Agent:
    """Whatever agent a saved folder holds (its ``agent.json`` names the kind); ``trusted`` as in
    :meth:`Agent.load` (SB3 zips are pickles)."""
    saved, _, config_file = read_saved(Path(path))
    if saved not in AGENTS:
        raise ValueError(f"{config_file}: unknown agent {saved!r}; valid agents: {', '.join(AGENTS)}")
    return getattr(AGENTS[saved], "func", AGENTS[saved]).load(path, trusted=trusted)


def make_seeded_agent(name: str, seed: int, /, **kwargs: Any) -> Agent:
    """``make_agent(name, seed=seed, **kwargs)``, leaving out ``seed`` for agents that take none; a
    ``seed`` in ``kwargs`` (e.g. from ``--agent-kwargs``) wins."""
    if name not in AGENTS:
        return make_agent(name)  # raises, listing the valid names
    target = getattr(AGENTS[name], "func", AGENTS[name])
    if "seed" in inspect.signature(target).parameters:
        kwargs = {"seed": seed, **kwargs}
    return make_agent(name, **kwargs)
