"""The ``pillow-env`` command line: demo, bench, inspect, train-agent, train-backbone, select."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backends import DEFAULT_MODEL
from .engine import TRAIN_REWARDS

MODEL_HELP = ("the LLM: a Hugging Face name or folder, an alias (smollm2-135m-instruct), openai:URL#MODEL, "
              "openai-chat:URL#MODEL or vllm:NAME")


def _agent_list(text: str) -> list[str]:
    from agents import AGENTS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in AGENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown agent(s) {', '.join(unknown) or '(none given)'}; "
                                         f"valid agents: {', '.join(AGENTS)}")
    return names


def _agent_name(text: str) -> str:
    return _agent_list(text)[0]


def _agent_kwargs(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"agent name": {"argument": value, ...}, ...}')
    return value


def _source(text: str) -> str:
    from .suite import SUITES

    if text not in SUITES and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text} (or a built-in suite: {', '.join(SUITES)})")
    return text


def _suite(text: str) -> str:
    from .suite import SUITES

    if text not in SUITES:
        raise argparse.ArgumentTypeError(f"unknown suite {text!r}; built-in suites: {', '.join(SUITES)}")
    return text


def _sources(args: argparse.Namespace, *names: str) -> None:
    """``--suite S`` stands for ``--pool S --train S --test S``; an explicit file overrides it."""
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, args.suite)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", type=_positive, default=None,
                   help="restrict actions to the C pool entries nearest each query (default: whole pool)")
    p.add_argument("--train-reward", choices=TRAIN_REWARDS, default="pillow",
                   help="training signal: generation + PillowReward, or the reference's likelihood "
                        "(evaluation always uses PillowReward)")


def _add_data(p: argparse.ArgumentParser, *, test: bool = True) -> None:
    p.add_argument("--suite", type=_suite, default="builtin",
                   help="built-in suite for every part not given as a file: 'builtin', 't0' or 'selfinstruct'")
    p.add_argument("--pool", type=_source, default=None, help="exemplar pool file, or a built-in suite")
    p.add_argument("--train", type=_source, default=None, help="training queries file, or a built-in suite")
    if test:
        p.add_argument("--test", type=_source, default=None, help="held-out queries file, or a built-in suite")
    p.add_argument("--shots", type=_positive, default=2, help="exemplars per query (m)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--adapter", default=None, help="peft LoRA adapter folder")
    p.add_argument("--seed", type=int, default=0, help="seeds the agents; also re-splits a built-in suite")
    p.add_argument("--max-new-tokens", type=_positive, default=None,
                   help="most tokens generated per answer (default: the suite's, 128 for selfinstruct, else 24)")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.model, shots=args.shots, queries=args.queries, seed=args.seed,
             max_new_tokens=args.max_new_tokens, out=args.out, suite=args.suite)


def _bench(args: argparse.Namespace) -> None:
    from .bench import BenchConfig, run_bench

    _sources(args, "pool", "train", "test")
    run_bench(BenchConfig(pool=args.pool, train=args.train, test=args.test, agents=args.agents, shots=args.shots,
                          model=args.model, adapter=args.adapter, episodes=args.episodes, seed=args.seed,
                          out=str(args.out), cache=args.cache, num_envs=args.num_envs,
                          max_new_tokens=args.max_new_tokens, test_limit=args.test_limit,
                          train_limit=args.train_limit,
                          agent_kwargs=args.agent_kwargs, candidates=args.candidates,
                          train_reward=args.train_reward, reference=args.reference, splits=args.splits))


def _examples(args: argparse.Namespace, queries_source: str, part: str):
    """The pool and the queries (long ones cut), with ``--shots`` / ``--candidates`` checked against the
    pool: before the LLM loads or a cache is made."""
    from .bench import check_shots
    from .data import cut_queries, resolve_examples

    pool = resolve_examples(args.pool, "pool", seed=args.seed, what="--pool")
    check_shots(args.shots, getattr(args, "candidates", None), pool)
    queries = cut_queries(resolve_examples(queries_source, part, seed=args.seed, what=f"--{part}"), f"--{part}")
    return pool, queries


def _encoder_and_engine(args: argparse.Namespace, queries_source: str, signal: str = "pillow"):
    """The encoder and the engine; ``max_new_tokens`` is ``--max-new-tokens`` or the suite's budget."""
    from .encoder import load_encoder
    from .engine import SIGNAL_OF
    from .resources import make_engine, shared_backend
    from .suite import suite_max_new_tokens

    encoder = load_encoder("minilm")
    budget = args.max_new_tokens if args.max_new_tokens is not None else suite_max_new_tokens(queries_source) or 24
    engine = make_engine(shared_backend(args.model, args.adapter), encoder, max_new_tokens=budget,
                         cache_path=args.cache, signal=SIGNAL_OF[signal])
    return encoder, engine


def _inspect(args: argparse.Namespace) -> None:
    from agents import load_agent, make_agent

    from .env import PillowMatchEnv
    from .prompts import user_text

    from .data import resolve_examples

    _sources(args, "pool", "queries")
    count = len(resolve_examples(args.queries, "test", seed=args.seed, what="--queries"))
    if not 0 <= args.query_index < count:  # checked before the LLM loads
        raise ValueError(f"--query-index must be in [0, {count}), got {args.query_index}")
    agent = load_agent(args.load, trusted=args.trust_pickle) if args.load else make_agent(args.agent)
    agent.check_can_select()  # an untrained SB3 / RLlib agent: one line, before the LLM loads
    pool, queries = _examples(args, args.queries, "test")
    encoder, engine = _encoder_and_engine(args, args.queries)
    env = PillowMatchEnv(pool, queries, m=args.shots, engine=engine, encoder=encoder)
    agent.prepare(env)
    selection = agent.select(env, args.query_index)
    query = queries[args.query_index]
    (result,) = engine.score([([pool[i] for i in selection], query)])
    print(f"agent: {agent.name}\nquery #{args.query_index}: {user_text(query)!r}\n")
    for n, i in enumerate(selection, 1):
        print(f"exemplar {n}: pool[{i}] {user_text(pool[i])!r} -> {pool[i].output!r}")
    print(f"\n--- rendered prompt ---\n{result.prompt}\n--- end of prompt ---\n")
    print(f"generation: {result.generation!r}\nreference:  {result.reference!r}")
    print("reward: " + ", ".join(f"{k} {v:.3f}" for k, v in {"reward": result.reward, **result.components}.items()))


def _train_agent(args: argparse.Namespace) -> None:
    import shutil

    from agents import Budget, make_seeded_agent

    from .outputs import Interrupted, claim_folder, naming
    from .vector import PillowMatchVectorEnv

    _sources(args, "pool", "train")
    agent = make_seeded_agent(args.agent, args.seed, **args.agent_kwargs.get(args.agent, {}))  # before the LLM
    agent.check_settings(num_envs=args.num_envs, budget=Budget(episodes=args.episodes))
    pool, queries = _examples(args, args.train, "train")
    _refuse_other_agent(args.out, agent.name)
    with claim_folder(args.out):  # created and proven writable before the LLM loads; one run at a time
        encoder, engine = _encoder_and_engine(args, args.train, signal=args.train_reward)
        venv = PillowMatchVectorEnv(args.num_envs, pool=pool, queries=queries, m=args.shots, engine=engine,
                                    encoder=encoder, candidates=args.candidates)
        partial = args.out / PARTIAL_AGENT
        try:
            log = agent.fit(venv, Budget(episodes=args.episodes), tensorboard=args.tensorboard)
        except KeyboardInterrupt:
            try:
                agent.save(partial)
            except Exception as err:  # noqa: BLE001 - whatever stops a half-trained agent saving, say it
                raise Interrupted(f"nothing (the agent could not be saved mid-training: {err})") from None
            raise Interrupted(f"the agent as trained so far, in {partial} (short of its --episodes budget; "
                              f"a rerun trains from the start)") from None
        with naming(args.out):
            path = agent.save(args.out)
        shutil.rmtree(partial, ignore_errors=True)  # an earlier interrupted run's, superseded
    print(f"trained {agent.name}: {log.episodes} episodes, {log.llm_calls} LLM calls; "
          f"saved to {path}")


PARTIAL_AGENT = "interrupted"  # train-agent's subfolder for an agent saved at Ctrl-C


def _refuse_other_agent(out: Path, name: str) -> None:
    """``--out`` holding another agent is refused: saving over it would mix two agents' files."""
    import json

    from agents.base import CONFIG_NAME

    config = out / CONFIG_NAME
    if not config.is_file():
        return
    try:
        saved = json.loads(config.read_text(encoding="utf-8")).get("agent")
    except (ValueError, UnicodeDecodeError, AttributeError):
        saved = None
    if saved != name:
        raise ValueError(f"--out {out} holds a saved {saved or 'unreadable'} agent ({config}); training "
                         f"{name} there would mix their files: remove it or give another --out")


def _train_backbone(args: argparse.Namespace) -> None:
    from .data import resolve_examples
    from .outputs import claim_folder
    from .training import TrainConfig, train_full, train_lora

    data = resolve_examples(args.data, "train", seed=args.seed, what="--data")
    train = train_full if args.full else train_lora
    config = TrainConfig(plw=args.plw, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, max_length=args.max_length, seed=args.seed,
                         lora_r=args.lora_r, max_steps=args.max_steps)
    with claim_folder(args.out):  # created and proven writable before the model loads; one run at a time
        train(args.model, data, config, output_dir=args.out)


def _select(args: argparse.Namespace) -> None:
    import contextlib
    import json
    import os

    from tqdm import tqdm

    from agents.selector import Selector

    from .data import cut_queries, load_examples, parse_json_line, parse_record
    from .outputs import Interrupted, naming

    out = None if str(args.out) == "-" else Path(args.out)
    if out is not None:
        inputs = {"--queries": args.queries, "--pool": args.pool, "--agent-dir": args.agent_dir}
        for flag, given in inputs.items():
            if given != "-" and Path(given).exists() and Path(given).resolve() == out.resolve():
                raise ValueError(f"--out {out} is also {flag}: give another output file")
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a file path")
    # Inputs are read and the selector loaded before any output exists; the answers go to a temporary
    # file renamed over --out at the end (a file of queries or a stream alike): a failure or Ctrl-C
    # leaves --out as it was. To stdout, each line of a stream is answered as it arrives.
    queries = None if args.queries == "-" else cut_queries(load_examples(args.queries, require_output=False),
                                                             "--queries")
    selector = Selector.load(args.agent_dir, args.pool, trusted=args.trust_pickle, shots=args.shots,
                             model=args.model, candidates=args.candidates, suite_seed=args.seed)
    tmp = None if out is None else out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with contextlib.nullcontext(sys.stdout) if tmp is None else open(tmp, "w", encoding="utf-8") as f:
            def write(batch) -> None:
                for selection in selector.select(batch):
                    f.write(json.dumps(selection.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
                f.flush()

            with naming(out or "<stdout>"):
                if queries is None:  # stream: answer each line as it arrives
                    for lineno, line in enumerate(sys.stdin, start=1):
                        if not line.strip():
                            continue
                        where = f"<stdin>:{lineno}"
                        record = parse_json_line(line, where)  # a byte-order mark dropped, as in files
                        query = parse_record({"instruction": record} if isinstance(record, str) else record, where,
                                             require_output=False)
                        write(cut_queries([query], where))
                        count += 1
                else:
                    for lo in tqdm(range(0, len(queries), args.batch_size), desc="select", unit="batch",
                                   disable=out is None):
                        write(queries[lo:lo + args.batch_size])
                    count = len(queries)
        if tmp is not None:
            with naming(out):
                os.replace(tmp, out)
    except KeyboardInterrupt:
        kept = f"the {count} selection(s) already printed" if out is None else \
            f"nothing: --out {out} is as it was ({count} selection(s) made were not written)"
        raise Interrupted(kept) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if out is not None:
        print(f"wrote {count} selections to {out}", file=sys.stderr)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless there is none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from agents import agent_names

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="pillow-env", description="In-context exemplar selection as RL (PILLOW).",
                                     formatter_class=fmt)
    # The global options, accepted before or after the subcommand (after it, they are not reset to defaults).
    shared = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (shared, argparse.SUPPRESS)):
        p.add_argument("--threads", type=_positive, default=default,
                       help="CPU threads for the in-process LLM (default: one per core; on a shared machine give "
                            "each process its share)")
        p.add_argument("--debug", action="store_true", default=False if default is None else default,
                       help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    # Option groups shared by several commands, each built once (argparse parent parsers).
    data, queries_data, training = (argparse.ArgumentParser(add_help=False) for _ in range(3))
    _add_data(data)
    _add_data(queries_data, test=False)
    _add_training(training)

    def add(name: str, *parents: argparse.ArgumentParser, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[shared, *parents], formatter_class=fmt, **kwargs)

    demo = add("demo", help="zero-shot vs random vs same-task exemplars on the built-in suite")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    demo.add_argument("--shots", type=_positive, default=2, help="exemplars per query")
    demo.add_argument("--queries", type=_positive, default=None, help="first N test queries (default: all)")
    demo.add_argument("--seed", type=int, default=0, help="built-in suite split and random exemplars")
    demo.add_argument("--suite", type=_suite, default="builtin",
                      help="built-in suite: 'builtin', 't0' or 'selfinstruct'")
    demo.add_argument("--max-new-tokens", type=_positive, default=None,
                      help="most tokens generated per answer (default: the suite's, 128 for selfinstruct, else 24)")
    demo.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    demo.set_defaults(func=_demo)

    bench = add("bench", data, training, help="train and compare agents; writes results.json, results.md, curves.png")
    from .bench import DEFAULT_AGENTS

    bench.add_argument("--agents", type=_agent_list, default=list(DEFAULT_AGENTS),
                       help=f"comma-separated agent names, of: {', '.join(agent_names())}")
    bench.add_argument("--episodes", type=_positive, default=1000,
                       help="training budget per learning agent: episodes (listwise: LLM calls)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="results folder")
    bench.add_argument("--cache", default=None, help="SQLite reward cache to reuse (default OUT/cache.sqlite)")
    bench.add_argument("--num-envs", type=_positive, default=16, help="episodes scored per batched LLM call while training")
    bench.add_argument("--test-limit", type=_positive, default=None, help="evaluate on the first N test queries")
    bench.add_argument("--train-limit", type=_positive, default=None,
                       help="train on the first N training queries (a learning curve: gain vs queries)")
    bench.add_argument("--agent-kwargs", type=_agent_kwargs, default={},
                       help='per-agent constructor arguments as JSON, e.g. \'{"reinforce": {"lr": 0.001}}\'')
    bench.add_argument("--reference", type=_agent_name, default=None,
                       help="agent every other is compared with (paired bootstrap interval); one of --agents "
                            "(default: knn, when it is among them)")
    bench.add_argument("--splits", type=_positive, default=1,
                       help="K seeded re-splits of a built-in suite (seeds SEED..SEED+K-1): every agent is trained "
                            "and tested on each, and the paired differences are pooled")
    bench.set_defaults(func=_bench)

    insp = add("inspect", queries_data, help="one query, one agent: exemplars, prompt, generation, reward")
    insp.add_argument("--queries", type=_source, default=None, help="queries file, or a built-in suite (its test split)")
    insp.add_argument("--query-index", type=int, default=0, help="which test query (0-based)")
    insp.add_argument("--agent", type=_agent_name, default="knn", help=f"one of: {', '.join(agent_names())}")
    insp.add_argument("--load", default=None, help="a saved agent folder (overrides --agent)")
    insp.add_argument("--cache", default=None, help="SQLite reward cache to reuse")
    insp.add_argument("--trust-pickle", action="store_true",
                      help="allow loading an SB3 agent's model.zip (a pickle: only for folders you made)")
    insp.set_defaults(func=_inspect)

    tra = add("train-agent", queries_data, training, help="train one agent and save it")
    tra.add_argument("--agent", type=_agent_name, default="reinforce", help=f"one of: {', '.join(agent_names())}")
    tra.add_argument("--episodes", type=_positive, default=1000, help="training budget: episodes (listwise: LLM calls)")
    tra.add_argument("--num-envs", type=_positive, default=16, help="episodes scored per batched LLM call")
    tra.add_argument("--out", type=Path, required=True, help="folder the trained agent is saved to")
    tra.add_argument("--tensorboard", default=None, help="TensorBoard log folder")
    tra.add_argument("--agent-kwargs", type=_agent_kwargs, default={},
                     help='constructor arguments as JSON, e.g. \'{"listwise": {"candidates": 6}}\'')
    tra.add_argument("--cache", default=None, help="SQLite reward cache to reuse")
    tra.set_defaults(func=_train_agent)

    trb = add("train-backbone", help="prompt-loss-weighted LoRA (or, with --full, full) fine-tuning of the LLM")
    trb.add_argument("--data", type=_source, default="builtin", help="training file, or a built-in suite (its train split)")
    trb.add_argument("--model", default=DEFAULT_MODEL, help="the Hugging Face causal LM to tune: name, folder or alias")
    trb.add_argument("--plw", type=float, default=0.1, help="prompt-loss weight in [0, 1]")
    trb.add_argument("--full", action="store_true",
                     help="fine-tune every weight (SFT) and save the whole model, instead of a LoRA adapter")
    trb.add_argument("--epochs", type=float, default=1.0, help="passes over the training data")
    trb.add_argument("--max-steps", type=_positive, default=None, help="stop after this many optimizer steps")
    trb.add_argument("--lr", type=float, default=2e-4, help="learning rate")
    trb.add_argument("--batch-size", type=_positive, default=8, help="examples per step")
    trb.add_argument("--grad-accum", type=_positive, default=1, help="gradient accumulation steps")
    trb.add_argument("--max-length", type=_positive, default=512, help="longest tokenized example")
    trb.add_argument("--lora-r", type=_positive, default=8, help="LoRA rank")
    trb.add_argument("--seed", type=int, default=0, help="random seed (and built-in suite split)")
    trb.add_argument("--out", type=Path, required=True, help="folder the adapter is saved to")
    trb.set_defaults(func=_train_backbone)
    sel = add("select", help="a saved agent picks exemplars for new queries (no LLM is loaded)")
    sel.add_argument("--agent-dir", required=True, help="a saved agent folder (train-agent / bench output)")
    sel.add_argument("--pool", type=_source, default="builtin", help="the pool the agent was trained on (file or built-in suite)")
    sel.add_argument("--queries", required=True,
                     help="JSON/JSONL file of queries (instruction, optional input), or - to stream JSONL from stdin")
    sel.add_argument("--out", default="-", help="JSONL output file (default: stdout)")
    sel.add_argument("--shots", type=_positive, default=None, help="exemplars per query (learned agents: as trained)")
    sel.add_argument("--model", default=DEFAULT_MODEL, help="whose prompt template to render (tokenizer only)")
    sel.add_argument("--candidates", type=_positive, default=None, help="restrict selection to the C pool entries nearest each query, as in training")
    sel.add_argument("--batch-size", type=_positive, default=256, help="queries embedded and selected per batch")
    sel.add_argument("--seed", type=int, default=0, help="built-in suite split seed (with a built-in --pool)")
    sel.add_argument("--trust-pickle", action="store_true",
                     help="allow loading an SB3 agent's model.zip (a pickle: only for folders you made)")
    sel.set_defaults(func=_select)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backends import BackendError
    from .outputs import Interrupted
    from .resources import set_threads

    try:
        set_threads(args.threads)
        args.func(args)
    except KeyboardInterrupt as err:  # Ctrl-C: one line saying what was kept, the shell's exit code for SIGINT
        if args.debug:
            raise
        kept = err.kept if isinstance(err, Interrupted) else "nothing"
        print(f"pillow-env {args.command}: interrupted: kept {kept}", file=sys.stderr)
        raise SystemExit(130) from None
    except (OSError, ValueError, ImportError, BackendError) as err:
        if args.debug:
            raise
        where = getattr(args, "out", None)
        if isinstance(err, OSError) and err.filename is None and where is not None:
            err = f"{err} (writing under --out {where})"  # a full disk names no file of its own
        print(f"pillow-env {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
