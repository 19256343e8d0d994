"""vLLM in process: ``model="vllm:NAME_OR_PATH"`` (a CUDA GPU and ``pip install 'pillow-env[vllm]'``).

Greedy ``SamplingParams``, a ``LoRARequest`` for ``adapter=``, ``prompt_logprobs`` for the likelihood
signal. Prompts are rendered with the model's own tokenizer and chat template, as in every backend,
and sent to vLLM as text (generation) or token ids (likelihood). ``benchmarks/gpu_check.sh`` compares
it with transformers on the same queries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..prompts import PromptRenderer
from .base import TokenizerBackend, cut_at_stop, loglik_token_ids

__all__ = ["VLLMBackend"]

INSTALL = "pip install 'pillow-env[vllm]' (vLLM needs a CUDA GPU; on a CPU use a model name or openai:URL#MODEL)"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"the vllm backend needs vLLM: {INSTALL} ({err})") from None
    return vllm


def _folder_identity(folder: Path) -> list[tuple[str, int]]:
    """Names and sizes of a model folder's files: identifies local weights without reading gigabytes."""
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


class VLLMBackend(TokenizerBackend):
    """A ``vllm.LLM`` behind the engine's generator interface."""

    def __init__(self, llm: Any, renderer: PromptRenderer, *, name: str, adapter: str | None = None) -> None:
        self.vllm = _import_vllm()
        self.llm, self.renderer, self.tokenizer = llm, renderer, renderer.tokenizer
        self.name, self.adapter = name, adapter
        self._add_special_tokens = not renderer.use_chat_template
        self._lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(adapter))
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, adapter: str | None = None, *, dtype: str = "auto",
                        gpu_memory_utilization: float = 0.85, max_model_len: int = 4096, seed: int = 0,
                        **renderer_kwargs: Any) -> VLLMBackend:
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        from .hf import resolve_model

        path = resolve_model(name_or_path)
        llm = vllm.LLM(model=path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, enable_lora=adapter is not None)
        renderer = PromptRenderer(AutoTokenizer.from_pretrained(path), **renderer_kwargs)
        return cls(llm, renderer, name=path, adapter=adapter)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            config = self.llm.llm_engine.model_config
            identity = (self.name, str(config.dtype), _folder_identity(Path(self.name)),
                        _folder_identity(Path(self.adapter)) if self.adapter else None)
            h = hashlib.sha256(json.dumps(["vllm", identity, self.renderer.fingerprint], default=str).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, *, batch_size: int = 16,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions; vLLM schedules the whole list itself (``batch_size`` is not needed)."""
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None)
        outputs = self.llm.generate(list(prompts), params, lora_request=self._lora, use_tqdm=False)
        return [cut_at_stop(out.outputs[0].text, stop) for out in outputs]

    def loglik(self, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16,
               mean: bool = False) -> np.ndarray:
        from vllm.inputs import TokensPrompt

        p_ids, t_ids = loglik_token_ids(self.tokenizer, prompts, targets, self._add_special_tokens)
        if not p_ids:
            return np.zeros(0)
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p + t) for p, t in zip(p_ids, t_ids)], params,
                                    lora_request=self._lora, use_tqdm=False)
        scores = []
        for out, t in zip(outputs, t_ids):
            ids = out.prompt_token_ids[-len(t):]
            values = [entry[token].logprob for entry, token in zip(out.prompt_logprobs[-len(t):], ids)]
            scores.append(float(np.mean(values) if mean else np.sum(values)))
        return np.array(scores, dtype=np.float64)
