"""The agent protocol: fit within a budget, select exemplars for a query, save, load.

Every agent selects from what the env shows of a state (``observation_for`` / ``action_mask_for``),
without resetting or stepping the env it is handed and without an LLM call: selection is free, only
scoring costs LLM calls. So a kNN retriever, a random picker and a PPO policy are evaluated by the
very same code.
"""

from __future__ import annotations

import inspect
import json
import numbers
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from pillow_env.data import examples_fingerprint
from pillow_env.env import PillowMatchEnv
from pillow_env.vector import PillowMatchVectorEnv

__all__ = ["Agent", "Budget", "FitRecord", "SelectionState", "check_arguments", "check_pool", "read_saved", "unwrap", "unwrap_vector"]

CONFIG_NAME = "agent.json"
HISTORY_NAME = "history.json"


@dataclass(frozen=True)
class Budget:
    """How much a learning agent may spend: episodes and/or LLM calls (generations plus likelihood
    passes: the scarce resource)."""

    episodes: int | None = None
    llm_calls: int | None = None

    def __post_init__(self) -> None:
        if self.episodes is None and self.llm_calls is None:
            raise ValueError("Budget needs episodes or llm_calls (or both)")
        for name in ("episodes", "llm_calls"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"Budget.{name} must be a whole number >= 1, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, int(value))

    def exhausted(self, episodes: int, llm_calls: int) -> bool:
        return ((self.episodes is not None and episodes >= self.episodes)
                or (self.llm_calls is not None and llm_calls >= self.llm_calls))

    def affords(self, episodes: int, llm_calls: int) -> bool:
        """Whether spending ``episodes`` more episodes and ``llm_calls`` more LLM calls (totals so far
        plus the next batch's worst case) stays within the budget: learners check it before each batch,
        so a budget is a cap, never exceeded."""
        return ((self.episodes is None or episodes <= self.episodes)
                and (self.llm_calls is None or llm_calls <= self.llm_calls))

    def check_batch(self, who: str, episodes: int, llm_calls: int, batch: str) -> None:
        """Refuse a budget smaller than one batch (``episodes`` episodes costing up to ``llm_calls``
        LLM calls), naming both numbers: such a run would train on nothing."""
        for name, need in (("episodes", episodes), ("llm_calls", llm_calls)):
            have = getattr(self, name)
            if have is not None and have < need:
                raise ValueError(f"{who}: Budget({name}={have}) is smaller than one batch ({batch}: up to {need} "
                                 f"{name.replace('_', ' ')}); raise the budget or lower the batch")


@dataclass
class FitRecord:
    """What one ``fit`` did, each field meaning the same for every learner.

    ``episodes``: episodes rolled out (for listwise: exemplar sets scored, cached ones included);
    ``llm_calls``: what the LLM was asked for on this fit's behalf (generations plus likelihood
    passes, cache hits excluded; for learners whose rollouts run in other processes, as their
    runners count them); ``history``: one point per update, each with at least ``episodes`` and
    ``reward`` (the training curve); ``extras``: what only this learner reports (listwise's chosen
    setting, RLlib's per-runner counts, ...).
    """

    episodes: int = 0
    llm_calls: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def unwrap(env: gym.Env | gym.vector.VectorEnv) -> PillowMatchEnv | PillowMatchVectorEnv:
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, (PillowMatchEnv, PillowMatchVectorEnv)):
        raise TypeError(f"expected a PillowMatch-v0 env or vector env, got {type(base).__name__}")
    return base


def first_env(env: gym.Env | gym.vector.VectorEnv) -> PillowMatchEnv:
    """The single env behind ``env``: itself, or the first of a vector env (all share pool and queries)."""
    base = unwrap(env)
    return base.envs[0] if isinstance(base, PillowMatchVectorEnv) else base


def unwrap_vector(env: gym.Env | gym.vector.VectorEnv, who: str) -> PillowMatchVectorEnv:
    """The native vector env behind ``env``, or a TypeError saying how to make one."""
    base = unwrap(env)
    if not isinstance(base, PillowMatchVectorEnv):
        raise TypeError(f"{who} needs the vector env: gym.make_vec('PillowMatch-v0', num_envs=N, "
                        "vectorization_mode='vector_entry_point')")
    return base


class Agent(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`select`; learners also :meth:`fit`."""

    name: ClassVar[str]
    learns: ClassVar[bool] = False
    # False for agents whose episodes are scored in other processes (their fit log counts the LLM calls)
    rollouts_in_process: ClassVar[bool] = True

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved as JSON so :meth:`load` can rebuild the agent."""
        return {}

    def check_settings(self, *, num_envs: int, budget: Budget | None = None) -> None:
        """Raise ``ValueError`` now if this agent cannot train with these settings (before any long work),
        e.g. a ``budget`` smaller than one batch of ``num_envs`` episodes."""

    def fit(self, env: gym.Env | gym.vector.VectorEnv, budget: Budget | None = None, **kwargs: Any) -> FitRecord:
        """Learn from ``env`` within ``budget``; returns what it did. Non-learners only prepare."""
        self.prepare(unwrap(env))
        return FitRecord()

    def prepare(self, env: PillowMatchEnv | PillowMatchVectorEnv) -> None:
        """Hook for agents that precompute something from the pool (kNN, BM25)."""

    @abstractmethod
    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        """Pool indices of the exemplars for ``env.queries[query_index]`` (``env.m`` of them, or none);
        ``env`` is read, never reset, stepped or re-configured."""

    def select_many(self, env: PillowMatchEnv, query_indices: list[int]) -> list[list[int]]:
        return [self.select(env, i) for i in query_indices]

    def check_can_select(self) -> None:
        """Raise ``ValueError`` (one line) if this agent cannot select yet: a learner whose policy exists
        only after ``fit`` or ``load``. Baselines and the kNN-initialised learners always can."""

    def save(self, path: str | Path) -> Path:
        """Weights first, then ``agent.json``: a refused save (nothing fitted) leaves no folder a loader
        would take for an agent."""
        path = Path(path)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._save_weights(path)
        except BaseException:
            if created:
                shutil.rmtree(path, ignore_errors=True)
            raise
        (path / CONFIG_NAME).write_text(json.dumps({"agent": self.name, "config": self.config()}, indent=2))
        return path

    def _save_weights(self, path: Path) -> None:
        """Learners write their weights here (safetensors or the algorithm's own zip)."""

    @classmethod
    def holds(cls, saved_name: str) -> bool:
        """Whether a folder saved under ``saved_name`` is an agent of this class."""
        return saved_name == getattr(cls, "name", None)

    @classmethod
    def load(cls, path: str | Path, *, trusted: bool = False) -> Agent:
        """Rebuild a saved agent of this class (``agents.load_agent(dir)`` loads whatever a folder holds).

        Our own weights are safetensors + JSON and load from any folder. SB3 agents are SB3 zips, which
        SB3 unpickles: they load only with ``trusted=True``, for folders you made yourself. A config
        holding an option this class no longer takes is refused, naming it (no silent upgrade).
        """
        path = Path(path)
        saved, config, config_file = read_saved(path)
        if not cls.holds(saved):
            raise ValueError(f"{path} holds a saved {saved!r} agent, not a {cls.__name__}; "
                             "load it with agents.load_agent(folder)")
        check_arguments(cls, config, f"{config_file}: config does not fit agent {saved!r}")
        try:
            agent = cls(**config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_file}: config does not fit agent {saved!r} ({err})") from None
        weights = [p.name for p in path.iterdir() if p.name != CONFIG_NAME]
        if agent.learns and weights and getattr(agent, "pool_fingerprint", "") is None:
            raise ValueError(f"{config_file}: 'pool_fingerprint' is null, so the pool this trained agent indexes "
                             "cannot be checked; re-save the agent (or fix the file)")
        try:
            agent._load_weights(path, trusted=trusted)
        except (FileNotFoundError, PermissionError, ValueError):
            raise  # our own refusals (e.g. an untrusted pickle) say what they are
        except Exception as err:  # safetensors, torch and SB3 raise their own types for a damaged file
            lines = [line.strip() for line in str(err).strip().splitlines()] or [type(err).__name__]
            keys = [line for line in lines if "key(s) in state_dict" in line]  # torch names the keys it met
            first = "; ".join(keys) if keys else lines[0]
            raise ValueError(f"{path}: the saved weights do not load with {CONFIG_NAME}'s settings (damaged, or "
                             f"edited by hand?): {type(err).__name__}: {first}") from None
        return agent

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        """Learners read their weights here (``trusted``: the folder may hold pickles)."""


def read_saved(path: Path) -> tuple[str, dict[str, Any], Path]:
    """A saved agent folder's (agent name, config, config file), each checked, naming the file."""
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved agent folder (no {CONFIG_NAME})")
    try:
        record = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict) \
            or not isinstance(record.get("agent"), str):
        raise ValueError(f"{config_file}: expected {{'agent': name, 'config': {{...}}}}")
    return record["agent"], record.get("config", {}), config_file


def check_arguments(agent_cls: Any, kwargs: dict[str, Any], where: str) -> None:
    """Refuse arguments the constructor does not take, or whose type does not match its default
    (``lr="fast"``), naming them, before anything runs."""
    target = getattr(agent_cls, "func", agent_cls)  # registry entries may be partials
    params = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            takes = ", ".join(p for p in params if p != "self") or "no arguments"
            raise ValueError(f"{where}: unknown argument(s) {', '.join(unknown)}; it takes {takes}")
    for name, value in kwargs.items():
        default = params[name].default if name in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (isinstance(value, int) or not isinstance(default, int) or float(value).is_integer())
        elif isinstance(default, (str, tuple, list, dict)):
            ok = isinstance(value, type(default)) or (isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)))
        else:
            ok = True
        if not ok:
            raise ValueError(f"{where}: {name} must be like its default {default!r} "
                             f"({type(default).__name__}), got {value!r}")


def save_history(folder: Path, history: list) -> None:
    """A learner's training history beside its weights (``history.json``)."""
    (folder / HISTORY_NAME).write_text(json.dumps(history))


def load_history(folder: Path) -> list:
    """The saved training history, or ``[]`` for a folder saved without one."""
    path = folder / HISTORY_NAME
    return json.loads(path.read_text()) if path.is_file() else []


def check_pool(env: PillowMatchEnv | PillowMatchVectorEnv, trained_on: str | None) -> str:
    """The fingerprint of ``env``'s pool; a ``ValueError`` if an agent trained on another pool meets it."""
    fingerprint = examples_fingerprint(first_env(env).pool)
    if trained_on is not None and fingerprint != trained_on:
        raise ValueError("this agent was trained on a different exemplar pool "
                         f"(fingerprint {trained_on}, env has {fingerprint})")
    return fingerprint


def summary_writer(logdir: str | Path | None):
    """A TensorBoard writer for ``logdir`` (``None``: no logging)."""
    if logdir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir))


@dataclass(frozen=True)
class SelectionState:
    """One state of a greedy selection: the query, the picks so far (in pick order), the observation
    the env would give there and its valid actions."""

    query_index: int
    chosen: list[int]
    obs: dict[str, Any]
    mask: np.ndarray


def greedy_rollout(env: PillowMatchEnv, query_index: int, scores_fn) -> list[int]:
    """Select ``m`` indices by repeatedly taking the best-scored valid action (no LLM call), reading
    the env's observations of each state without resetting or stepping it.

    ``scores_fn(state: SelectionState) -> (K,) array`` scores every pool entry in that state.
    """
    picks: list[int] = []
    for _ in range(env.m):
        state = SelectionState(query_index, list(picks), env.observation_for(query_index, picks),
                               env.action_mask_for(query_index, picks))
        scores = np.asarray(scores_fn(state), dtype=np.float64).copy()
        scores[~state.mask] = -np.inf
        picks.append(int(np.argmax(scores)))
    return picks
