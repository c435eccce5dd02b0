"""``python -m geventconnpool``: command-line entry point (argument parsing only).

``python -m geventconnpool demo`` runs :mod:`geventconnpool.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .demo import QUICK, DemoOptions, run

__all__ = ["main", "parse"]

_DEFAULTS = DemoOptions()


def _count(text: str) -> int:
    """A positive integer; ``50,000`` and ``50_000`` are accepted."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = _DEFAULTS
    p = sub.add_parser(
        "demo",
        help="PINGs through a pool vs a new connection per request, with a server drop",
        description=(
            "Start an embedded PING server on 127.0.0.1 (or use --host/--port), send PINGs "
            "from many greenlets through a pool, then with a new connection per request, and "
            "print both side by side. Halfway through, the server drops every connection once."
        ),
    )
    p.add_argument(
        "--greenlets", type=_count, help=f"concurrent greenlets (default {d.greenlets:,})"
    )
    p.add_argument(
        "--requests", type=_count, help=f"requests via the pool (default {d.requests:,})"
    )
    p.add_argument("--size", type=_count, default=d.size, help="pool size (connections)")
    p.add_argument(
        "--compare-requests",
        type=_count,
        help=(
            "requests with a new connection each (fewer: they are slow;"
            f" default {d.compare_requests:,})"
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=(
            "a run of about a second: {greenlets} greenlets, {requests:,} requests,"
            " {compare_requests:,} to compare (explicit counts still apply)".format(**QUICK)
        ),
    )
    p.add_argument("--host", help="a PING-speaking server instead of the embedded one")
    p.add_argument("--port", type=_port, help="its port (default 6379, Redis's, with --host)")
    p.add_argument("--no-compare", action="store_true", help="skip the per-connection run")
    p.add_argument("--no-drop", action="store_true", help="do not drop connections halfway")
    p.add_argument(
        "--max-seconds",
        type=_seconds,
        default=d.max_seconds,
        help="stop (and fail) if the whole demo takes longer",
    )


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the parsed arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m geventconnpool", description="geventconnpool command-line tools"
    )
    parser.add_argument("--version", action="version", version=f"geventconnpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(sub)
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    parser, args = parse(argv)
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return 2
    counts = QUICK if args.quick else vars(_DEFAULTS)
    opts = DemoOptions(
        greenlets=args.greenlets or counts["greenlets"],
        requests=args.requests or counts["requests"],
        size=args.size,
        compare_requests=args.compare_requests or counts["compare_requests"],
        host=args.host,
        port=args.port,
        compare=not args.no_compare,
        drop=not args.no_drop,
        max_seconds=args.max_seconds,
    )
    return run(opts, sys.stdout, sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
