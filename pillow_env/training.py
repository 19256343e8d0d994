"""Prompt-loss-weighted (PLW) LoRA fine-tuning ("Instruction Fine-Tuning: Does Prompt Loss Matter?").

Every target token of a rendered training sequence gets a weight: 1 for completion (answer) tokens,
``plw`` for prompt tokens (template, instruction, input, exemplars), 0 for padding. The loss is

    L = sum_t w_t * CE_t / sum_t w_t

over the whole optimizer step (all micro-batches of a gradient-accumulation step together), so
``plw = 0`` is exactly completion-only training and ``plw = 1`` exactly the ordinary causal-LM loss.
Sequences are rendered by the env's :class:`~pillow_env.prompts.PromptRenderer`, so training and
inference inputs match. A token that straddles the prompt/completion boundary (the tokenizer merged
across it) counts as completion: it carries answer text the model must learn to produce.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .backends.hf import Backbone
from .data import Example, examples_fingerprint
from .outputs import Interrupted, naming, prepare_folder, write_json
from .prompts import PromptRenderer

__all__ = ["TrainConfig", "tokenize_weighted", "weighted_loss", "train_lora", "train_full", "TRAINING_RECORD"]

TRAINING_RECORD = "pillow_training.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainConfig:
    """PLW LoRA settings. The defaults train a useful adapter for SmolLM2 on CPU in minutes."""

    plw: float = 0.1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: Sequence[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.plw <= 1.0 or math.isnan(self.plw):
            raise ValueError(f"plw must be in [0, 1], got {self.plw}")
        if self.epochs <= 0 and not self.max_steps:
            raise ValueError("epochs must be > 0 (or set max_steps)")
        if self.max_length < 2:  # position 0 is never a target: one token leaves nothing to learn
            raise ValueError(f"max_length must be >= 2 (a sequence needs a token to predict), got {self.max_length}")


@dataclass
class WeightedSequence:
    input_ids: list[int]
    weights: list[float]  # weight of each token *as a prediction target*; position 0 is never a target
    prompt_tokens: int
    completion_tokens: int


def tokenize_weighted(renderer: PromptRenderer, example: Example, plw: float, *,
                      exemplars: Sequence[Example] = (), max_length: int | None = None) -> WeightedSequence:
    """Render (exemplars, example) and weight its tokens: completion 1, prompt ``plw``."""
    tokenizer = renderer.tokenizer
    prompt, completion = renderer.render_pair(exemplars, example)
    enc = tokenizer(prompt + completion, add_special_tokens=not renderer.use_chat_template,
                    return_offsets_mapping=True)
    boundary = len(prompt)
    ids = list(enc["input_ids"])
    is_completion = [end > boundary and end > start for start, end in enc["offset_mapping"]]
    weights = [1.0 if c else plw for c in is_completion]
    weights[0] = 0.0
    if max_length is not None and len(ids) > max_length:
        warnings.warn(f"training example {example.instruction[:40]!r} has {len(ids)} tokens; keeping the last "
                      f"max_length={max_length}", stacklevel=2)
        ids, weights, is_completion = ids[-max_length:], weights[-max_length:], is_completion[-max_length:]
        weights[0] = 0.0
    n_completion = sum(is_completion)
    return WeightedSequence(ids, weights, len(ids) - n_completion, n_completion)


def collate(batch: Sequence[WeightedSequence], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, s in enumerate(batch):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(s.weights)
    return {"input_ids": ids, "attention_mask": mask, "weights": weights}


def weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor,
                  normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """``sum(w * CE) / normalizer`` (default ``sum(w)``) over next-token predictions."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                           input_ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    total = (w * ce).sum()
    return total / (w.sum() if normalizer is None else normalizer)


def _steps(config: TrainConfig, n_examples: int) -> int:
    per_epoch = math.ceil(n_examples / (config.batch_size * config.grad_accum))
    planned = math.ceil(per_epoch * config.epochs)
    return min(planned, config.max_steps) if config.max_steps else planned


def _order(n: int, seed: int, epochs: int) -> list[int]:
    """Example order over all epochs: a seeded shuffle per epoch (so a resumed run sees the same order)."""
    order: list[int] = []
    for epoch in range(epochs):
        perm = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        order += perm
    return order


def train_lora(base: str | Backbone, examples: Sequence[Example], config: TrainConfig | None = None, *,
               output_dir: str | Path, exemplars: Sequence[Sequence[Example]] | None = None,
               progress: bool = True, resume: bool = True) -> Path:
    """Fine-tune a LoRA adapter on ``examples`` with prompt-loss weight ``config.plw``.

    ``base`` is a model name/path/alias, or a loaded :class:`Backbone` (which gets the LoRA layers
    injected in place). ``exemplars[i]``, if given, are rendered in front of ``examples[i]`` and
    weighted as prompt.

    Writes the peft adapter (``save_pretrained``, safetensors) and ``pillow_training.json`` (base
    model, plw, data fingerprint, generation ratio Rg, loss curve) to ``output_dir``. A checkpoint
    is kept every ``checkpoint_every`` steps, and at Ctrl-C (:class:`~pillow_env.outputs.Interrupted`
    names it); with ``resume`` an interrupted run continues from it.
    """
    from peft import LoraConfig, get_peft_model

    config = config or TrainConfig()
    if exemplars is not None and len(exemplars) != len(examples):
        raise ValueError(f"exemplars has {len(exemplars)} entries for {len(examples)} examples")
    prepare_folder(output_dir, "output_dir")  # a read-only location fails now, not after training
    backbone = base if isinstance(base, Backbone) else Backbone.from_pretrained(base)
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(backbone.model, lora)
    return _fit(backbone, model, examples, config, Path(output_dir), exemplars, progress, resume, checkpoints=True)


def train_full(base: str | Backbone, examples: Sequence[Example], config: TrainConfig | None = None, *,
               output_dir: str | Path, exemplars: Sequence[Sequence[Example]] | None = None,
               progress: bool = True) -> Path:
    """Supervised fine-tuning of every weight (the reference PILLOW compares LoRA with), with the
    same prompt-loss-weighted objective, data order and schedule as :func:`train_lora`.

    Writes the whole model and its tokenizer (``save_pretrained``, safetensors), loadable as a
    ``model=`` folder, plus ``pillow_training.json``. No mid-run checkpoints: a full copy of the
    weights per checkpoint is not worth it at this scale; a rerun starts again. Ctrl-C keeps the
    weights so far in ``output_dir/checkpoint`` (loadable as a model folder), named in the message.
    """
    config = config or TrainConfig()
    if exemplars is not None and len(exemplars) != len(examples):
        raise ValueError(f"exemplars has {len(exemplars)} entries for {len(examples)} examples")
    prepare_folder(output_dir, "output_dir")  # a read-only location fails now, not after training
    backbone = base if isinstance(base, Backbone) else Backbone.from_pretrained(base)
    torch.manual_seed(config.seed)
    for parameter in backbone.model.parameters():
        parameter.requires_grad_(True)
    out = _fit(backbone, backbone.model, examples, config, Path(output_dir), exemplars, progress, resume=False,
               checkpoints=False)
    backbone.tokenizer.save_pretrained(out)
    return out


def _fit(backbone: Backbone, model: Any, examples: Sequence[Example], config: TrainConfig, out: Path,
         exemplars: Sequence[Sequence[Example]] | None, progress: bool, resume: bool, checkpoints: bool) -> Path:
    """The training loop both methods share: weighted loss, AdamW on what ``model`` lets train,
    linear decay, the record; LoRA checkpoints (and resumes) every ``checkpoint_every`` steps."""
    from safetensors.torch import load_file, save_file

    sequences = [tokenize_weighted(backbone.renderer, ex, config.plw, max_length=config.max_length,
                                   exemplars=exemplars[i] if exemplars is not None else ())
                 for i, ex in enumerate(examples)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    total_steps = _steps(config, len(sequences))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, total_steps)))
    micro = config.batch_size
    per_step = micro * config.grad_accum
    order = _order(len(sequences), config.seed, math.ceil(total_steps * per_step / len(sequences)) + 1)

    step, curve = 0, []
    checkpoint = out / CHECKPOINT_DIR
    if resume and (checkpoint / "state.json").is_file():
        state = json.loads((checkpoint / "state.json").read_text())
        if state["config"] != _jsonable(config) or state["data"] != examples_fingerprint(examples):
            raise ValueError(f"{checkpoint} was written by a run with other settings or data; "
                             "remove it or choose another output_dir")
        weights = load_file(str(checkpoint / "adapter.safetensors"))
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        step, curve = state["step"], state["curve"]

    model.train()
    pad = backbone.tokenizer.pad_token_id
    device = backbone.device
    bar = tqdm(total=total_steps, initial=step, desc=f"{'LoRA' if checkpoints else 'SFT'} plw={config.plw:g}",
               unit="step", disable=not progress)
    tokens_seen, started = 0, time.perf_counter()
    try:
        while step < total_steps:
            chunk = [sequences[i] for i in order[step * per_step:(step + 1) * per_step]]
            normalizer = sum(sum(s.weights) for s in chunk)  # sum of w over the whole optimizer step
            optimizer.zero_grad()
            step_loss = 0.0
            for lo in range(0, len(chunk), micro):
                batch = collate(chunk[lo:lo + micro], pad)
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
                loss = weighted_loss(logits, batch["input_ids"].to(device), batch["weights"].to(device),
                                     normalizer=max(normalizer, 1e-8))
                loss.backward()
                step_loss += loss.item()
                tokens_seen += int(batch["attention_mask"].sum())
            with _uninterrupted():  # the weights and the step count change together, or not at all
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                curve.append({"step": step, "loss": step_loss})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if checkpoints and step % config.checkpoint_every == 0 and step < total_steps:
                _save_checkpoint(model, optimizer, scheduler, checkpoint, step, curve, config, examples, save_file)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(_keep_at_interrupt(backbone, model, optimizer, scheduler, checkpoint, step, total_steps,
                                             curve, config, examples, checkpoints, save_file)) from None
    bar.close()
    seconds = time.perf_counter() - started

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    with naming(out):
        model.save_pretrained(out, safe_serialization=True)
    prompt_tokens = np.mean([s.prompt_tokens for s in sequences])
    completion_tokens = np.mean([s.completion_tokens for s in sequences])
    # Rg = completion / prompt tokens; null (not Infinity, which is no JSON) when no prompt token was kept
    ratio = float(completion_tokens / prompt_tokens) if prompt_tokens > 0 else None
    record = {"base_model": backbone.name, "plw": config.plw, "data_fingerprint": examples_fingerprint(examples),
              "examples": len(examples), "generation_ratio": ratio,
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "method": "lora" if checkpoints else "full",
              # the process's peak resident memory so far: the cost of training when it ran in its own process
              "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "mean_prompt_tokens": float(prompt_tokens), "mean_completion_tokens": float(completion_tokens),
              "steps": step, "train_seconds": seconds, "tokens_per_second": tokens_seen / max(seconds, 1e-9),
              "config": _jsonable(config), "loss_curve": curve}
    write_json(out / TRAINING_RECORD, record)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return out


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _keep_at_interrupt(backbone, model, optimizer, scheduler, checkpoint: Path, step: int, total_steps: int, curve,
                       config, examples, resumable: bool, save_file) -> str:
    """Save what Ctrl-C stopped: LoRA a checkpoint the rerun resumes from, full fine-tuning its weights so
    far (a rerun starts again: no optimizer state is kept for every weight); the sentence says which."""
    if step == 0:
        return "nothing (stopped before the first optimizer step)"
    if resumable:
        _save_checkpoint(model, optimizer, scheduler, checkpoint, step, curve, config, examples, save_file)
        return f"a checkpoint after step {step} of {total_steps} in {checkpoint}; rerun the same command to resume"
    model.eval()
    with naming(checkpoint):
        model.save_pretrained(checkpoint, safe_serialization=True)
        backbone.tokenizer.save_pretrained(checkpoint)
    return (f"the weights after step {step} of {total_steps} in {checkpoint} (loadable as --model; full "
            "fine-tuning does not resume, a rerun starts again)")


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data["target_modules"] = list(data["target_modules"])
    return data


def _save_checkpoint(model, optimizer, scheduler, folder: Path, step: int, curve, config, examples, save_file) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "lora_" in k}
    save_file(trainable, str(tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    write_json(tmp / "state.json", {"step": step, "curve": curve, "config": _jsonable(config),
                                    "data": examples_fingerprint(examples)}, indent=None)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
