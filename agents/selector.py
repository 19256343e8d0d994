"""A trained selector in use: new queries in, exemplars and the rendered prompt out, no LLM loaded.

Selection needs only the sentence encoder (the agent's observations) and the model's tokenizer (its
prompt template): no weights are loaded and no reward is computed, so selecting is orders of
magnitude cheaper than generating, and the prompt goes to whatever LLM serves production traffic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pillow_env.data import DataError, Example, load_examples
from pillow_env.encoder import Encoder, load_encoder
from pillow_env.data import ExampleSource, resolve_examples
from pillow_env.env import PillowMatchEnv
from pillow_env.prompts import PromptRenderer, user_text
from pillow_env.resources import DEFAULT_MODEL, embed_examples

from .base import Agent

__all__ = ["Selection", "Selector", "load_renderer"]

CHARS_PER_TOKEN = 4  # exemplar budgets count characters / 4 where the renderer has no tokenizer (openai-chat:)


def load_renderer(model: str = DEFAULT_MODEL) -> PromptRenderer:
    """The prompt renderer of a ``model`` string: its tokenizer and chat template only, never its weights."""
    from pillow_env.backends import load_renderer as renderer_of

    return renderer_of(model)


@dataclass(frozen=True)
class Selection:
    """The exemplars chosen for one query, in prompt order, and the prompt they make.

    ``scores`` are each exemplar's cosine similarity to the query (instruction + input, by the
    selector's encoder: what kNN ranks by; a learned agent may pick a less similar one on purpose).
    ``dropped`` are the pool indices the agent picked that did not fit ``exemplar_budget``.
    """

    query: Example
    indices: list[int]
    exemplars: list[Example]
    prompt: str
    messages: list[dict[str, str]] | None
    scores: list[float] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"query": {"instruction": self.query.instruction, "input": self.query.input},
                                  "indices": self.indices, "exemplars": [e.to_dict() for e in self.exemplars],
                                  "scores": self.scores, "prompt": self.prompt}
        if self.dropped:
            record["dropped"] = self.dropped
        if self.messages is not None:
            record["messages"] = self.messages
        return record


class _FilteredEnv(PillowMatchEnv):
    """The env with a fixed set of allowed pool entries ANDed into its action mask (``where=``)."""

    allowed: np.ndarray | None = None

    def action_mask_for(self, query_index: int, chosen=()) -> np.ndarray:
        mask = super().action_mask_for(query_index, chosen)
        return mask if self.allowed is None else mask & self.allowed


def _matches(example: Example, where: Mapping[str, Any]) -> bool:
    for key, wanted in where.items():
        value = example.metadata.get(key) if key not in ("instruction", "input", "output") else getattr(example, key)
        if isinstance(wanted, (list, tuple, set, frozenset)) and value not in wanted:
            return False
        if not isinstance(wanted, (list, tuple, set, frozenset)) and value != wanted:
            return False
    return True


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
        exemplar_budget: the most tokens all exemplars of a prompt may take together (instruction,
            input and output by the model's tokenizer; characters / 4 for a renderer without one).
            Over it, the least similar exemplar is dropped until they fit (fewer shots, never an
            over-long prompt); ``Selection.dropped`` names them. ``None``: no budget.
    """

    def __init__(self, agent: Agent, pool: ExampleSource = "builtin", *, shots: int | None = None,
                 model: str = DEFAULT_MODEL, encoder: str | Encoder = "minilm", candidates: int | None = None,
                 renderer: PromptRenderer | None = None, suite_seed: int = 0,
                 exemplar_budget: int | None = None) -> None:
        agent.check_can_select()  # an untrained SB3 / RLlib agent: one line now, not at the first query
        if exemplar_budget is not None and exemplar_budget < 0:
            raise ValueError(f"exemplar_budget must be None or >= 0, got {exemplar_budget}")
        self.exemplar_budget = exemplar_budget
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

    def _env(self, queries: list[Example], allowed: np.ndarray | None = None) -> PillowMatchEnv:
        env = _FilteredEnv(self.pool, queries, m=self.m, encoder=self.encoder, candidates=self.candidates)
        env.allowed = allowed
        self.agent.prepare(env)  # learned agents check the pool fingerprint here
        return env

    def allowed(self, where: Mapping[str, Any]) -> np.ndarray:
        """The pool entries ``where`` keeps: each key (a metadata field such as ``category``, or
        ``instruction`` / ``input`` / ``output``) equals the value, or is one of a list of values."""
        if not isinstance(where, Mapping) or not where:
            raise ValueError(f"where must be a non-empty dict of field -> value(s), got {where!r}")
        fields = {"instruction", "input", "output"}.union(*(e.metadata for e in self.pool))
        unknown = sorted(set(where) - fields)
        if unknown:
            raise ValueError(f"where: no pool entry has the field {unknown[0]!r} (fields: {', '.join(sorted(fields))})")
        mask = np.array([_matches(e, where) for e in self.pool], dtype=bool)
        if mask.sum() < self.m:
            raise ValueError(f"where={dict(where)!r}: {int(mask.sum())} pool entries match, fewer than the "
                             f"{self.m} exemplars to pick")
        return mask

    def _tokens(self, example: Example) -> int:
        texts = [user_text(example), example.output]
        tokenizer = getattr(self.renderer, "tokenizer", None)
        if tokenizer is None:
            return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts)
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    def _fit_budget(self, indices: list[int], similarity: dict[int, float]) -> tuple[list[int], list[int]]:
        """(kept, dropped): the least similar exemplar dropped until the rest fit ``exemplar_budget``."""
        if self.exemplar_budget is None:
            return indices, []
        kept, dropped = list(indices), []
        while kept and sum(self._tokens(self.pool[i]) for i in kept) > self.exemplar_budget:
            worst = min(kept, key=lambda i: similarity[i])
            kept.remove(worst)
            dropped.append(worst)
        return kept, dropped

    def select(self, queries: Example | str | Sequence[Example | str], *,
               where: Mapping[str, Any] | None = None) -> list[Selection]:
        """Exemplars and prompt for each query (an :class:`Example` or a plain instruction string).

        ``where`` (e.g. ``{"category": "summarization"}``, see :meth:`allowed`) masks every other pool
        entry out of the agent's actions before it selects; an agent that does not pick through the
        env's action mask (``listwise`` ranks sets of its own shortlist) is refused, not post-filtered.
        """
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
        allowed = None if where is None else self.allowed(where)
        env = self._env(examples, allowed)
        chosen = self.agent.select_many(env, list(range(len(examples))))
        keys = embed_examples(self.encoder, self.pool, with_output=False)
        out = []
        for q, (query, indices) in enumerate(zip(examples, chosen)):
            indices = [int(i) for i in indices]
            if allowed is not None and not allowed[indices].all():
                raise ValueError(f"where: the {self.agent.name} agent picked pool entries outside the filter "
                                 f"({[i for i in indices if not allowed[i]]}): it does not select through the "
                                 "env's action mask; filter with one that does (knn, bm25, mmr, dpp, reinforce, "
                                 "the SB3 agents)")
            similarity = {i: float(keys[i] @ env.query_embeddings[q]) for i in indices}
            indices, dropped = self._fit_budget(indices, similarity)
            scores = [similarity[i] for i in indices]
            exemplars = [self.pool[i] for i in indices]
            out.append(Selection(query, indices, exemplars, self.renderer.render(exemplars, query),
                                 self.renderer.messages(exemplars, query), scores, dropped))
        return out

    def select_file(self, path: str | Path) -> list[Selection]:
        """Select for every record of a JSON / JSONL file; records need only ``instruction`` (and ``input``)."""
        return self.select(load_examples(path, require_output=False))
