"""PLW sweep: LoRA-tune SmolLM2 at several prompt-loss weights, then score each adapter on held-out queries.

For each PLW (same seed, data, steps and LoRA settings) the adapter is evaluated zero-shot and with
kNN 2-shot exemplars on the built-in suite's test split; the base model is the reference row.
Writes a table, JSON and a plot of score vs PLW (symlog x, since 0 is on the axis). Also measures
training throughput (tokens/s) against TRL's ``SFTTrainer`` in completion-only mode (plw = 0),
same data, steps and LoRA settings, in the same run (``pip install -e '.[bench]'`` for TRL).

Usage: ``python benchmarks/bench_plw.py [--plws 0,0.01,0.1,0.25,1] [--epochs 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from agents import KNNAgent, ZeroShotAgent, evaluate
from pillow_env.backends import DEFAULT_MODEL
from pillow_env.backends.hf import Backbone, resolve_model
from pillow_env.encoder import load_encoder
from pillow_env.resources import make_engine
from pillow_env.env import PillowMatchEnv
from pillow_env.suite import builtin_suite
from pillow_env.training import TRAINING_RECORD, TrainConfig, train_lora

def score_adapter(model: str, adapter: Path | None, suite, encoder, max_new_tokens: int) -> dict[str, dict[str, float]]:
    backbone = Backbone.from_pretrained(model, adapter=adapter)
    engine = make_engine(backbone, encoder, max_new_tokens=max_new_tokens)
    env = PillowMatchEnv(suite.pool, suite.test, m=2, engine=engine, encoder=encoder)
    return {setting: evaluate(agent, env, progress=False).means
            for setting, agent in (("zero_shot", ZeroShotAgent()), ("knn_2shot", KNNAgent()))}


def trl_tokens_per_second(model: str, examples, config: TrainConfig, steps: int) -> dict[str, float]:
    """TRL SFTTrainer, completion-only loss, same LoRA settings and batch, ``steps`` optimizer steps."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    renderer = Backbone.from_pretrained(model).renderer
    pairs = [renderer.render_pair([], ex) for ex in examples]
    dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=config.batch_size, max_steps=steps,
                         learning_rate=config.lr, lr_scheduler_type="linear", warmup_steps=0, save_strategy="no",
                         report_to=[], use_cpu=True, completion_only_loss=True, max_length=config.max_length,
                         seed=config.seed, logging_steps=max(1, steps // 5), dataloader_num_workers=0,
                         max_grad_norm=1.0,
                         # Like ours: fp32, no activation checkpointing. TRL defaults to bf16 autocast,
                         # which CPUs without native bf16 emulate ~17x slower (measured here).
                         bf16=False, gradient_checkpointing=False)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora)
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    mean_len = sum(lengths) / len(lengths)
    tokens = mean_len * steps * config.batch_size
    return {"tokens_per_second": tokens / seconds, "train_seconds": seconds, "tokens": tokens}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    plws = [r["plw"] for r in rows]
    for key, style in (("zero_shot", "o-"), ("knn_2shot", "s-")):
        ax.plot(plws, [r[key]["rouge_l"] for r in rows], style, label=f"{key} ROUGE-L")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("prompt-loss weight (symlog)")
    ax.set_ylabel("held-out ROUGE-L")
    ax.set_title("PLW LoRA sweep, built-in suite")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--plws", default="0,0.01,0.1,0.25,1")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--trl-steps", type=int, default=10, help="steps for the throughput comparison (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plw"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    suite = builtin_suite(args.seed)
    encoder = load_encoder("minilm")
    plws = [float(p) for p in args.plws.split(",")]

    results_path = args.out / "plw.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"rows": [], "base": None}
    done = {r["plw"] for r in results["rows"]}
    if results["base"] is None:
        results["base"] = score_adapter(args.model, None, suite, encoder, args.max_new_tokens)
        results_path.write_text(json.dumps(results, indent=2))
    for plw in plws:
        if plw in done:
            continue
        config = TrainConfig(plw=plw, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
        adapter = train_lora(args.model, suite.train, config, output_dir=args.out / f"adapter-plw{plw:g}")
        record = json.loads((adapter / TRAINING_RECORD).read_text())
        row = {"plw": plw, **score_adapter(args.model, adapter, suite, encoder, args.max_new_tokens),
               "steps": record["steps"], "tokens_per_second": record["tokens_per_second"],
               "final_loss": record["loss_curve"][-1]["loss"], "generation_ratio": record["generation_ratio"]}
        results["rows"].append(row)
        results_path.write_text(json.dumps(results, indent=2))  # an interrupted sweep keeps finished rows
        print(f"plw {plw:g}: zero-shot ROUGE-L {row['zero_shot']['rouge_l']:.3f}, "
              f"kNN 2-shot ROUGE-L {row['knn_2shot']['rouge_l']:.3f}")

    if args.trl_steps and "throughput" not in results:
        config = TrainConfig(plw=0.0, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                             max_steps=args.trl_steps)
        with tempfile.TemporaryDirectory() as tmp:
            ours = json.loads((train_lora(args.model, suite.train, config, output_dir=tmp, progress=False)
                               / TRAINING_RECORD).read_text())
        theirs = trl_tokens_per_second(args.model, suite.train, config, args.trl_steps)
        results["throughput"] = {"steps": args.trl_steps, "ours_tokens_per_second": ours["tokens_per_second"],
                                 "trl_tokens_per_second": theirs["tokens_per_second"],
                                 "ratio_ours_over_trl": ours["tokens_per_second"] / theirs["tokens_per_second"]}
        results_path.write_text(json.dumps(results, indent=2))

    rows = sorted(results["rows"], key=lambda r: r["plw"])
    lines = [f"Base model (no adapter): zero-shot ROUGE-L {results['base']['zero_shot']['rouge_l']:.3f}, "
             f"kNN 2-shot ROUGE-L {results['base']['knn_2shot']['rouge_l']:.3f}", "",
             "| PLW | zero-shot reward | zero-shot ROUGE-L | kNN 2-shot reward | kNN 2-shot ROUGE-L | final loss |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['plw']:g} | {r['zero_shot']['reward']:.3f} | {r['zero_shot']['rouge_l']:.3f} | "
                     f"{r['knn_2shot']['reward']:.3f} | {r['knn_2shot']['rouge_l']:.3f} | {r['final_loss']:.3f} |")
    if "throughput" in results:
        t = results["throughput"]
        lines += ["", f"Training throughput at plw=0 over {t['steps']} steps: ours {t['ours_tokens_per_second']:.0f} "
                      f"tokens/s, TRL SFTTrainer {t['trl_tokens_per_second']:.0f} tokens/s "
                      f"(ratio {t['ratio_ours_over_trl']:.2f})"]
    (args.out / "plw.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "plw.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
