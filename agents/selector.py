"""A trained selector in use: new queries in, exemplars and the rendered prompt out, no LLM loaded.

Selection needs only the sentence encoder (the agent's observations) and the model's tokenizer (its
prompt template): no weights are loaded and no reward is computed, so selecting is orders of
magnitude cheaper than generating, and the prompt goes to whatever LLM serves production traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillow_env.data import DataError, Example, load_examples
from pillow_env.encoder import Encoder, load_encoder
from pillow_env.data import ExampleSource, resolve_examples
from pillow_env.env import PillowMatchEnv
from pillow_env.prompts import PromptRenderer
from pillow_env.resources import DEFAULT_MODEL

from .base import Agent

__all__ = ["Selection", "Selector", "load_renderer"]


def load_renderer(model: str = DEFAULT_MODEL) -> PromptRenderer:
    """The prompt renderer of a ``model`` string: its tokenizer and chat template only, never its weights."""
    from pillow_env.backends import load_renderer as renderer_of

    return renderer_of(model)


@dataclass(frozen=True)
class Selection:
    """The exemplars chosen for one query, in prompt order, and the prompt they make."""

    query: Example
    indices: list[int]
    exemplars: list[Example]
    prompt: str
    messages: list[dict[str, str]] | None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"query": {"instruction": self.query.instruction, "input": self.query.input},
                                  "indices": self.indices, "exemplars": [e.to_dict() for e in self.exemplars],
                                  "prompt": self.prompt}
        if self.messages is not None:
            record["messages"] = self.messages
        return record


def _trained_m(agent: Agent) -> int | None:
    """How many exemplars a learned agent was trained to pick (its network fixes it), if it says."""
    net = getattr(agent, "net", None)
    if net is not None:
        return int(net.m)
    space = getattr(getattr(agent, "model", None), "observation_space", None)  # an SB3 model's
    return None if space is None else int(space["chosen"].shape[0])


class Selector:
    """A saved (or live) agent plus the pool it selects from.

    Args:
        agent: any registered agent (baselines included: a kNN is a valid selector).
        pool: the exemplar pool the agent was trained on: a built-in suite (``"builtin"``, ``"t0"``), a
            dataset file or examples (repeated records dropped, as the env does).
            Learned agents refuse another pool.
        shots: exemplars per query; learned agents use the ``m`` they were trained with.
        model: the model whose prompt template renders the prompt (only its tokenizer is loaded).
        encoder: the sentence encoder the agent observes queries with.
        candidates: restrict selection to the C pool entries nearest each query, as in training.
        renderer: an already-built :class:`PromptRenderer` (overrides ``model``).
    """

    def __init__(self, agent: Agent, pool: ExampleSource = "builtin", *, shots: int | None = None,
                 model: str = DEFAULT_MODEL, encoder: str | Encoder = "minilm", candidates: int | None = None,
                 renderer: PromptRenderer | None = None, suite_seed: int = 0) -> None:
        agent.check_can_select()  # an untrained SB3 / RLlib agent: one line now, not at the first query
        self.agent = agent
        self.pool = resolve_examples(pool, "pool", seed=suite_seed)
        trained = _trained_m(agent)
        if shots is not None and trained is not None and shots != trained:
            raise ValueError(f"shots={shots}, but this {agent.name} agent was trained to pick {trained}")
        self.m = trained or shots or 2
        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        self.candidates = candidates
        self.renderer = renderer or load_renderer(model)
        # An env over the pool alone checks the pool against the agent now, not at the first query.
        self._env(self.pool[:1])

    @classmethod
    def load(cls, agent_dir: str | Path, pool: ExampleSource = "builtin", *, trusted: bool = False,
             **kwargs: Any) -> Selector:
        """Whatever agent ``agent_dir`` holds (``load_agent``; SB3 zips only with ``trusted=True``), as a selector."""
        from .registry import load_agent

        return cls(load_agent(agent_dir, trusted=trusted), pool, **kwargs)

    def _env(self, queries: list[Example]) -> PillowMatchEnv:
        env = PillowMatchEnv(self.pool, queries, m=self.m, encoder=self.encoder, candidates=self.candidates)
        self.agent.prepare(env)  # learned agents check the pool fingerprint here
        return env

    def select(self, queries: Example | str | Sequence[Example | str]) -> list[Selection]:
        """Exemplars and prompt for each query (an :class:`Example` or a plain instruction string)."""
        items = [queries] if isinstance(queries, (Example, str)) else list(queries)
        examples = []
        for i, q in enumerate(items):
            example = Example(q) if isinstance(q, str) else q
            if not isinstance(example, Example):
                raise TypeError(f"query {i}: expected an Example or an instruction string, got {type(q).__name__}")
            if not example.instruction.strip():
                raise DataError(f"query {i}: the instruction is empty")
            examples.append(example)
        if not examples:
            return []
        env = self._env(examples)
        chosen = self.agent.select_many(env, list(range(len(examples))))
        out = []
        for query, indices in zip(examples, chosen):
            exemplars = [self.pool[i] for i in indices]
            out.append(Selection(query, [int(i) for i in indices], exemplars, self.renderer.render(exemplars, query),
                                 self.renderer.messages(exemplars, query)))
        return out

    def select_file(self, path: str | Path) -> list[Selection]:
        """Select for every record of a JSON / JSONL file; records need only ``instruction`` (and ``input``)."""
        return self.select(load_examples(path, require_output=False))
