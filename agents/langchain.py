"""A trained selector as a LangChain example selector (``pip install 'pillow-env[langchain]'``).

``FewShotPromptTemplate`` and ``FewShotChatMessagePromptTemplate`` take any ``BaseExampleSelector``;
:class:`PillowExampleSelector` is one whose ``select_examples`` asks a saved (or live) agent which
pool entries to show, so a learned selector drops into an existing LangChain prompt:

    selector = PillowExampleSelector.load("runs/listwise", pool="builtin")
    prompt = FewShotPromptTemplate(example_selector=selector, example_prompt=..., suffix=..., input_variables=[...])

Examples come out as dicts with ``instruction``, ``input`` and ``output`` (plus the pool entry's
metadata fields, e.g. ``category``), the order the agent chose (the nearest last, next to the query).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.example_selectors import BaseExampleSelector

from pillow_env.data import Example, ExampleSource, parse_record

from .base import Agent
from .selector import Selection, Selector

__all__ = ["PillowExampleSelector"]

FIELDS = ("instruction", "input", "output")


class PillowExampleSelector(BaseExampleSelector):
    """LangChain's example-selector interface over an agent and its pool.

    Args:
        agent: any registered agent (``make_agent("knn")``, or a trained one; :meth:`load` reads a
            saved folder).
        pool: the pool it selects from (a built-in suite name, a dataset file or examples); a learned
            agent accepts only the pool it was trained on.
        instruction_key, input_key: which of the prompt's input variables hold the query's
            instruction and its input (the input may be absent).
        where: a metadata filter applied before selection (see :meth:`Selector.allowed`), e.g.
            ``{"category": "summarization"}``.
        **selector: the rest of :class:`~agents.selector.Selector`'s options (``model``,
            ``encoder``, ``exemplar_budget``, ...).

    ``last_selection`` holds the latest :class:`~agents.selector.Selection` (indices, similarity
    scores, dropped exemplars): what was chosen for the last input, and why it looked relevant.
    """

    def __init__(self, agent: Agent, pool: ExampleSource = "builtin", *, instruction_key: str = "instruction",
                 input_key: str = "input", where: dict[str, Any] | None = None, **selector: Any) -> None:
        self.selector = Selector(agent, pool, **selector)
        self.instruction_key, self.input_key = instruction_key, input_key
        self.where = where
        if where is not None:
            self.selector.allowed(where)  # a bad filter fails here, not at the first prompt
        self.last_selection: Selection | None = None

    @classmethod
    def load(cls, agent_dir: str | Path, pool: ExampleSource = "builtin", *, trusted: bool = False,
             **kwargs: Any) -> PillowExampleSelector:
        """Whatever agent ``agent_dir`` holds (SB3 zips only with ``trusted=True``), as an example selector."""
        from .registry import load_agent

        return cls(load_agent(agent_dir, trusted=trusted), pool, **kwargs)

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, Any]]:
        """The agent's exemplars for this input, as dicts of ``instruction``, ``input``, ``output`` and metadata."""
        if self.instruction_key not in input_variables:
            raise ValueError(f"PillowExampleSelector: the input variables ({', '.join(input_variables) or 'none'}) "
                             f"hold no {self.instruction_key!r}; name the query's variable with instruction_key=")
        query = Example(str(input_variables[self.instruction_key]), str(input_variables.get(self.input_key) or ""))
        (self.last_selection,) = self.selector.select(query, where=self.where)
        return [{**{k: v for k, v in e.metadata.items() if k not in FIELDS}, "instruction": e.instruction,
                 "input": e.input, "output": e.output} for e in self.last_selection.exemplars]

    def add_example(self, example: dict[str, str]) -> int:
        """Add ``example`` to the pool of an agent that learns nothing (kNN, BM25, MMR, DPP, random: it is
        a candidate from the next selection on) and return its pool index (the existing one if it is
        already there). A learned agent is refused: its network was trained on exactly this pool, and
        a changed pool would no longer be the one it learned; retrain it on the larger pool instead."""
        agent = self.selector.agent
        if agent.learns:
            raise ValueError(f"add_example: the {agent.name} agent was trained on this pool "
                             f"({len(self.selector.pool)} entries) and selects only from it; add the example to "
                             "the pool file and retrain, or use a retriever that learns nothing (e.g. knn)")
        new = parse_record(example, "add_example")  # Alpaca or Dolly fields, as in a dataset file
        for i, entry in enumerate(self.selector.pool):
            if (entry.instruction, entry.input, entry.output) == (new.instruction, new.input, new.output):
                return i
        self.selector.pool = [*self.selector.pool, new]
        return len(self.selector.pool) - 1
