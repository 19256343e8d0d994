"""Any OpenAI-compatible server as the LLM: vLLM, SGLang, TGI, llama.cpp, ``transformers serve``.

``model="openai:URL#MODEL"`` (or ``openai:URL#MODEL#TOKENIZER`` when the served name is not a
loadable tokenizer): prompts are rendered here with the model's own tokenizer and chat template,
exactly as in process, and sent to ``URL/completions`` greedily (``temperature=0``, ``max_tokens``,
``stop``). What a reward-engine batch needs from a server:

- many requests in flight: a batch of N prompts is never N sequential round trips. A list of
  prompts goes in one request where the server takes lists (vLLM does; detected once), otherwise
  one prompt per request, ``concurrency`` at a time;
- retries with exponential backoff and jitter on connection errors, timeouts, 429 and 5xx (the
  ``openai`` client's own, ``max_retries``), then one clear error naming the server (URL without
  credentials); other 4xx fail at once with the server's message;
- the API key from an environment variable (``OPENAI_API_KEY`` by default), never written to
  results, logs or cache keys;
- likelihood scoring where the server can (vLLM's ``prompt_logprobs``, or ``echo`` with
  ``logprobs``), detected once, with a clear error where it cannot;
- a fingerprint of the served model as the server reports it (``/v1/models``: id, root, owner)
  plus the renderer, so a cache is never reused across different served weights.

Results are cached by the engine batch by batch, so a server failure loses no finished answer and
a rerun resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..prompts import PromptRenderer
from .base import (BackendError, LikelihoodUnsupported, ServerRejected, ServerUnreachable, TokenizerBackend,
                   cut_at_stop, loglik_token_ids)
from .openai_client import OpenAIClient, public_url, split_server_target

__all__ = ["OpenAIBackend", "load_tokenizer", "public_url", "split_target"]


def split_target(target: str) -> tuple[str, str, str]:
    """``"URL#MODEL[#TOKENIZER]"`` -> (base URL, served model name, tokenizer name or path)."""
    url, model, *tokenizer = split_server_target(target, "openai", ("URL#MODEL", "URL#MODEL#TOKENIZER"))
    return url, model, tokenizer[0] if tokenizer else model


def load_tokenizer(name: str) -> Any:
    """The tokenizer an ``openai:`` model string names after ``#``: a folder, an alias, or a Hugging
    Face name, found in the local cache first; the hub is asked once (no retries) only for a name not
    cached. A name found nowhere is one ``FileNotFoundError`` naming it at once, not a minute of hub
    retries and transformers' two-line message."""
    from huggingface_hub import constants, model_info
    from transformers import AutoTokenizer

    from .hf import resolve_model

    path = resolve_model(name)
    if Path(path).expanduser().is_dir():
        return AutoTokenizer.from_pretrained(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError:
        pass  # not in the local cache
    where = (f"tokenizer {name!r} (openai:URL#MODEL[#TOKENIZER]) is no local folder and not in the Hugging Face "
             "cache")
    fix = "give a tokenizer folder after the last '#', or download it first (huggingface-cli download NAME)"
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{where}, and HF_HUB_OFFLINE is set; {fix}")
    try:
        model_info(path, timeout=10)  # one request: a missing or unreachable name fails here, at once
    except Exception as err:  # noqa: BLE001 (not found, gated, invalid name, no network: all one answer)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"{where}, nor found on the hub ({type(err).__name__}: {reason}); {fix}") from None
    return AutoTokenizer.from_pretrained(path)


class OpenAIBackend(OpenAIClient, TokenizerBackend):
    """The LLM behind an OpenAI-compatible ``/v1/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        renderer: renders prompts locally (the served model's tokenizer and chat template).
        api_key: sent as the bearer token; ``None`` reads ``api_key_env`` (or sends ``"EMPTY"``).
        max_retries: retries of a request on connection errors, timeouts, 429 and 5xx.
        timeout: seconds per request.
        concurrency: requests in flight at once.
    """

    def __init__(self, base_url: str, model: str, renderer: PromptRenderer, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_retries: int = 4, timeout: float = 120.0,
                 concurrency: int = 16) -> None:
        super().__init__(base_url, model, api_key=api_key, api_key_env=api_key_env, max_retries=max_retries,
                         timeout=timeout, concurrency=concurrency)
        self.renderer, self.tokenizer = renderer, renderer.tokenizer
        self._add_special_tokens = not renderer.use_chat_template
        self._takes_lists: bool | None = None  # detected at the first batch
        self._loglik_mode: str | None = None  # "prompt_logprobs" or "echo", detected at the first call
        self._fingerprint: str | None = None

    @classmethod
    def from_spec(cls, target: str, **kwargs: Any) -> OpenAIBackend:
        """From the part after ``openai:``; the tokenizer is loaded locally, no weights."""
        url, model, tokenizer = split_target(target)
        renderer_kwargs = {k: kwargs.pop(k) for k in ("max_exemplar_tokens", "use_chat_template") if k in kwargs}
        return cls(url, model, PromptRenderer(load_tokenizer(tokenizer), **renderer_kwargs), **kwargs)

    @property
    def name(self) -> str:
        return f"openai:{public_url(self.base_url)}#{self.model}"

    # -- requests ---------------------------------------------------------------------------------

    def _complete(self, prompt: str | list[str] | list[int], **params: Any) -> list[Any]:
        response = self._call(lambda: self._client.completions.create(model=self.model, prompt=prompt, **params),
                              "completion")
        return sorted(response.choices, key=lambda c: c.index)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, *, batch_size: int = 16,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions, in order; text from the first ``stop`` string on is cut, as in process."""
        prompts = list(prompts)
        if not prompts:
            return []
        params = {"max_tokens": max_new_tokens, "temperature": 0.0, **({"stop": list(stop)} if stop else {})}
        texts: list[str] = []
        if self._takes_lists is None and len(prompts) > 1:
            first = prompts[:batch_size]
            try:
                choices = self._complete(first, **params)
                self._takes_lists = len(choices) == len(first)
            except ServerRejected as err:
                if not 400 <= err.status < 500:
                    raise
                self._takes_lists = False  # a list prompt is refused: send one prompt per request
            if self._takes_lists:
                texts = [c.text for c in choices]
                prompts = prompts[len(first):]
        if self._takes_lists:
            chunks = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
            for chunk in self._map(lambda c: [x.text for x in self._complete(c, **params)], chunks):
                texts += chunk
        else:
            texts += self._map(lambda p: self._complete(p, **params)[0].text, prompts)
        return [cut_at_stop(text, stop) for text in texts]

    # -- likelihood -------------------------------------------------------------------------------

    def _token_logprobs(self, ids: list[int], mode: str) -> list[float | None]:
        if mode == "prompt_logprobs":  # vLLM: one entry per prompt token, the first None
            (choice,) = self._complete(ids, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": 0})
            entries = (choice.model_extra or {}).get("prompt_logprobs")
            if not isinstance(entries, list) or len(entries) != len(ids):
                raise BackendError("no prompt_logprobs in the response")
            out: list[float | None] = []
            for token, entry in zip(ids, entries):
                if entry is None:
                    out.append(None)
                    continue
                value = entry.get(str(token), entry.get(token)) if isinstance(entry, dict) else None
                value = value if value is not None else next(iter(entry.values()))
                out.append(float(value["logprob"] if isinstance(value, dict) else value))
            return out
        (choice,) = self._complete(ids, max_tokens=0, temperature=0.0, echo=True, logprobs=0)
        logprobs = getattr(choice, "logprobs", None)
        values = getattr(logprobs, "token_logprobs", None) if logprobs is not None else None
        if not isinstance(values, list) or len(values) < len(ids):
            raise BackendError("no echoed token_logprobs in the response")
        return [None if v is None else float(v) for v in values[:len(ids)]]

    def loglik(self, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16,
               mean: bool = False) -> np.ndarray:
        """Sum (or per-token mean) log-probability of each target after its prompt, token ids sent as such."""
        p_ids, t_ids = loglik_token_ids(self.tokenizer, prompts, targets, self._add_special_tokens)
        if not p_ids:
            return np.zeros(0)
        if self._loglik_mode is None:
            self._loglik_mode = self._detect_loglik(p_ids[0] + t_ids[0])

        def score(i: int) -> float:
            values = self._token_logprobs(p_ids[i] + t_ids[i], self._loglik_mode)[-len(t_ids[i]):]
            return float(np.mean(values) if mean else np.sum(values))

        return np.array(self._map(score, list(range(len(p_ids)))), dtype=np.float64)

    def _detect_loglik(self, ids: list[int]) -> str:
        for mode in ("prompt_logprobs", "echo"):
            try:
                self._token_logprobs(ids, mode)
                return mode
            except ServerUnreachable:  # the server is down, not unable
                raise
            except BackendError:
                continue
        raise LikelihoodUnsupported(f"{public_url(self.base_url)} ({self.model}) cannot score likelihoods: it accepts "
                           "neither vLLM's prompt_logprobs nor echo with logprobs on /v1/completions. Serve the "
                           "model with vLLM (or another server that supports one of them), or train with the "
                           "generation reward")

    # -- identity ---------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The served model as the server reports it (id, root, owner) plus the prompt format."""
        if self._fingerprint is None:
            h = hashlib.sha256(repr(("openai", self._served_identity(), self.renderer.fingerprint)).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
