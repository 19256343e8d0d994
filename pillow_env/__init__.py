"""pillow-env: in-context exemplar selection (PILLOW) as a Gymnasium RL problem."""

from .data import DataError, Example, LoadReport, examples_fingerprint, load_examples, resolve_examples, split_examples
from .prompts import PromptRenderer
from .suite import Suite, builtin_suite, load_suite, selfinstruct_suite, t0_suite

__version__ = "0.1.0"

__all__ = ["DataError", "Example", "LoadReport", "PillowMatchEnv", "PillowMatchVectorEnv", "PromptRenderer", "Suite",
           "builtin_suite", "examples_fingerprint", "load_examples", "load_suite", "resolve_examples", "split_examples",
           "selfinstruct_suite", "t0_suite", "__version__"]


def __getattr__(name: str):
    """The env classes load on first use (they bring in torch and the encoder; ``import pillow_env`` stays light)."""
    if name == "PillowMatchEnv":
        from .env import PillowMatchEnv

        return PillowMatchEnv
    if name == "PillowMatchVectorEnv":
        from .vector import PillowMatchVectorEnv

        return PillowMatchVectorEnv
    raise AttributeError(f"module 'pillow_env' has no attribute {name!r}")

import gymnasium as _gym

_gym.register(id="PillowMatch-v0", entry_point="pillow_env.env:PillowMatchEnv",
              vector_entry_point="pillow_env.vector:PillowMatchVectorEnv")
