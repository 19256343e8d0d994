"""What the two OpenAI-API backends share (``openai:`` on ``/v1/completions``, ``openai-chat:`` on
``/v1/chat/completions``): model-string parsing, the client with its retries and key handling,
credential masking, requests in flight and the served model's identity. One copy, so both
backends retry, fail, mask and fingerprint the same way."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import BackendError, ServerRejected, ServerUnreachable

__all__ = ["OpenAIClient", "public_url", "split_server_target"]


def public_url(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_server_target(target: str, kind: str, forms: Sequence[str]) -> list[str]:
    """The part after ``kind:`` (``"URL#NAME[#...]"``) split at ``#`` and checked against ``forms``
    (e.g. ``("URL#MODEL",)``): as many parts as one form has, none empty, an http(s) URL. Returns
    ``[base URL without a trailing slash, *names]``; messages show the URL without credentials."""
    parts = target.split("#")
    shown = "#".join([public_url(parts[0]), *parts[1:]])
    if len(parts) not in {form.count("#") + 1 for form in forms} or not all(parts):
        raise ValueError(f"expected {' or '.join(kind + ':' + form for form in forms)}, got {kind}:{shown!r}")
    if urlsplit(parts[0]).scheme not in ("http", "https"):
        raise ValueError(f"{kind}:{shown!r}: the server URL must start with http:// or https://")
    return [parts[0].rstrip("/"), *parts[1:]]


class OpenAIClient:
    """An ``openai`` client for one served model, and the request plumbing both backends use.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        api_key: sent as the bearer token; ``None`` reads ``api_key_env`` (or sends ``"EMPTY"``).
        max_retries: retries of a request on connection errors, timeouts, 429 and 5xx.
        timeout: seconds per request.
        concurrency: requests in flight at once.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_retries: int = 4, timeout: float = 120.0,
                 concurrency: int = 16) -> None:
        from openai import OpenAI

        self.base_url, self.model = base_url.rstrip("/"), model
        self.max_retries, self.concurrency = max_retries, concurrency
        self._client = OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get(api_key_env) or "EMPTY",
                              max_retries=max_retries, timeout=timeout)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests this backend had open at once (observability, tests)

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """One API call with the client's retries; errors become one clear :class:`BackendError`."""
        import openai

        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return fn()
        except openai.APIStatusError as err:
            message = getattr(err, "body", None) or err.message
            raise ServerRejected(f"{public_url(self.base_url)} ({self.model}): {what} failed with HTTP "
                                 f"{err.status_code}: {message}", err.status_code) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise ServerUnreachable(f"{public_url(self.base_url)} ({self.model}): {what} failed after "
                                    f"{self.max_retries} retries: {type(err).__name__}: {err}") from None
        finally:
            with self._lock:
                self._in_flight -= 1

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items`` in order, ``concurrency`` at a time."""
        if len(items) <= 1:  # nothing left (a first list request took the whole batch) or one item
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _served_identity(self) -> tuple[Any, ...]:
        """The served model as ``/v1/models`` reports it: (id, owner, root, parent, revision)."""
        listed = self._call(lambda: self._client.models.list(), "listing models")
        served = {m.id: m for m in listed.data}
        if self.model not in served:
            names = ", ".join(sorted(served)[:10]) or "none"
            raise BackendError(f"{public_url(self.base_url)} does not serve {self.model!r} (it serves: {names})")
        entry = served[self.model]
        extra = entry.model_extra or {}
        return entry.id, entry.owned_by, extra.get("root"), extra.get("parent"), extra.get("revision")
