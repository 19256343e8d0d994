"""Exemplar-selection agents for pillow-env: one protocol, one registry.

Note: ``agents`` is also the import name of the unrelated ``openai-agents`` package; do not
install both in one environment.
"""

from .base import Agent, Budget, FitRecord
from .baselines import BM25Agent, DPPAgent, KNNAgent, MMRAgent, RandomAgent, ZeroShotAgent
from .evaluation import Evaluation, evaluate
from .listwise import ListwiseAgent
from .matching import MatchingNetwork
from .registry import AGENTS, agent_names, check_agent_kwargs, load_agent, make_agent, make_seeded_agent
from .reinforce import ReinforceAgent
from .sb3 import MatchingPolicy, SB3Agent, SB3VecEnv

__all__ = ["AGENTS", "Agent", "BM25Agent", "Budget", "DPPAgent", "Evaluation", "FitRecord", "KNNAgent", "ListwiseAgent",
           "MMRAgent", "MatchingNetwork", "MatchingPolicy", "RandomAgent", "ReinforceAgent", "SB3Agent",
           "SB3VecEnv", "ZeroShotAgent",
           "agent_names", "check_agent_kwargs", "load_agent", "evaluate", "make_agent", "make_seeded_agent"]
