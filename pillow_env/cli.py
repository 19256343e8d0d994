"""The ``pillow-env`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.model, shots=args.shots, queries=args.queries, seed=args.seed,
             max_new_tokens=args.max_new_tokens, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pillow-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="zero-shot vs random vs same-task exemplars on the built-in suite")
    demo.add_argument("--model", default="smollm2-135m-instruct", help="HF causal LM name/path or alias")
    demo.add_argument("--shots", type=int, default=2)
    demo.add_argument("--queries", type=int, default=None, help="first N test queries (default: all)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
