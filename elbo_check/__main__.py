"""Command line: ``python -m elbo_check selftest [--seed S] [--n N] [--json]``,
``python -m elbo_check demo [--seed S] [--plot FILE] [--json]`` and
``python -m elbo_check doctor package.module:function [--objective elbo] [--beta B]``.

Also installed as the ``elbo-check`` console script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._doctor_cli import add_doctor_parser, run_doctor
from ._version import __version__

__all__ = ["PIPE_CLOSED_STATUS", "main"]

#: Exit status when the reader of stdout goes away (``elbo-check demo --json | head``):
#: 128 + SIGPIPE, what the shell reports for a program that the signal ended.
PIPE_CLOSED_STATUS = 141


def _parse_int(text: str, minimum: int, requirement: str) -> int:
    """``int(text)`` if it is at least ``minimum``; else an error stating ``requirement``."""
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"must be {requirement}; got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """argparse ``type=`` for counts: an integer >= 1."""
    return _parse_int(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    """argparse ``type=`` for seeds: an integer >= 0 (what numpy's ``default_rng`` takes)."""
    return _parse_int(text, 0, "a non-negative integer")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose messages for a bad option value read
    ``--n must be a positive integer; got 'abc'`` (argparse itself would print
    ``argument --n: must be ...``)."""

    def error(self, message: str) -> NoReturn:
        super().error(re.sub(r"^argument ([^:]+): must ", r"\1 must ", message))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="elbo-check",
        description="Exact ELBO / KL / log-evidence oracle for linear-Gaussian latent models.",
    )
    parser.add_argument("--version", action="version", version=f"elbo_check {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    selftest = commands.add_parser(
        "selftest",
        help="check every identity on random models of every family and size class",
        description=(
            "Draw random models of every family (general, full noise, PPCA, factor "
            "analysis, Bayesian linear regression) and size class (small, latent>data, "
            "wide, ill-conditioned), check every identity and independent route, print "
            "the worst residual of each against its tolerance, and exit with status 1 "
            "if any check fails."
        ),
    )
    selftest.add_argument(
        "--seed", type=_non_negative_int, default=0, help="random seed (default: 0)"
    )
    selftest.add_argument(
        "--n", type=_positive_int, default=3, help="random models per case (default: 3)"
    )
    selftest.add_argument("--json", action="store_true", help="print the report as JSON")
    demo = commands.add_parser(
        "demo",
        help="watch log p(x) = ELBO + KL while fitting q (phi) and then the model (theta)",
        description=(
            "An exact, deterministic experiment on a small linear-Gaussian model (D = 5, "
            "K = 2, non-zero prior mean, 10 data rows). Phase 1 fits the variational "
            "parameters phi by gradient ascent on the exact ELBO: log p(x) stays fixed, "
            "the ELBO rises and KL(q || p(z|x)) falls to ~0. Phase 2 fits the model "
            "parameters theta (W, b, noise variances) by generalised EM: log p(x) rises. "
            "Prints a table of selected steps (or JSON); --plot writes a PNG figure "
            "(needs matplotlib: pip install -e '.[plot]' in the clone)."
        ),
    )
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    demo.add_argument("--plot", metavar="FILE", help="write the two-phase figure as a PNG")
    demo.add_argument("--json", action="store_true", help="print every step as JSON")
    add_doctor_parser(commands, _non_negative_int)
    return parser


def _run_demo(seed: int, plot: str | None, as_json: bool) -> int:
    from ._demo import plot_demo, run_demo

    result = run_demo(seed)
    if plot is not None:
        try:
            plot_demo(result, plot)
        except ImportError as err:
            print(f"elbo-check demo: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"elbo-check demo: error: cannot write {plot}: {err}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.format_table())
        if plot is not None:
            print(f"wrote {plot}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "selftest":
        from ._selftest import run_selftest

        report = run_selftest(seed=args.seed, draws=args.n)
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            print(report.format_table())
        return 0 if report.passed else 1
    if args.command == "demo":
        return _run_demo(args.seed, args.plot, args.json)
    if args.command == "doctor":
        return run_doctor(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _discard_stdout() -> None:
    """Point the stdout file descriptor at the null device, so that the interpreter's
    final flush of what is still buffered cannot fail a second time."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout (tests)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, descriptor)
    finally:
        os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    If the reader of stdout closes the pipe early (``elbo-check demo --json | head``),
    the run ends quietly with :data:`PIPE_CLOSED_STATUS` instead of a traceback (see
    "Note on SIGPIPE" in the documentation of Python's :mod:`signal` module).
    """
    args = build_parser().parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return PIPE_CLOSED_STATUS
    return status


if __name__ == "__main__":
    sys.exit(main())
