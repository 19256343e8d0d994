"""pillow-env: in-context exemplar selection (PILLOW) as a Gymnasium RL problem."""

from .data import DataError, Example, LoadReport, examples_fingerprint, load_examples, split_examples
from .prompts import PromptRenderer
from .suite import Suite, builtin_suite

__version__ = "0.1.0"

__all__ = ["DataError", "Example", "LoadReport", "PromptRenderer", "Suite", "builtin_suite",
           "examples_fingerprint", "load_examples", "split_examples", "__version__"]

import gymnasium as _gym

_gym.register(id="PillowMatch-v0", entry_point="pillow_env.env:PillowMatchEnv",
              vector_entry_point="pillow_env.vector:PillowMatchVectorEnv")
