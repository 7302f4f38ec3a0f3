"""The ``tango-prune`` command. Bad input ends with one line on stderr and exit code 2.

One module per command or group: tokens (prune, compare, viz), bench (bench, bench-pruner), evaluate (eval), run,
fidelity, serve, demo (+ demo_qa); model_spec resolves what --model names for eval, run and fidelity; common holds
the argument types and the one-line error.
"""
from __future__ import annotations

import os
import sys

from .common import Parser, UsageError


def build_parser() -> Parser:
    from . import bench, evaluate, fidelity, run, serve, tokens

    p = Parser(prog="tango-prune", description="Visual-token pruning for Video LLMs (Tango and peers).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    bench.register(sub)
    tokens.register(sub)
    evaluate.register(sub)
    run.register(sub)
    fidelity.register(sub)
    serve.register(sub)  # parses its own arguments; the rest go to vLLM
    # the demo parses its own options (tango-prune demo --help)
    sub.add_parser("demo", help="decode a real clip, prune its tokens, draw what was kept", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "demo":
            from . import demo

            return demo.main(rest)
        if args.command == "serve":
            from . import serve

            return serve.main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
