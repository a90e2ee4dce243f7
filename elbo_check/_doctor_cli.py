"""``python -m elbo_check doctor package.module:function``: the loss doctor on the command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_doctor_parser", "run_doctor"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_doctor_parser(commands: Any, seed_type: Callable[[str], int]) -> None:
    """Add the ``doctor`` sub-command to ``commands`` (an argparse sub-parsers object)."""
    doctor = commands.add_parser(
        "doctor",
        help="say which convention a loss implements (reductions, scale, sign, beta, constants)",
        description=(
            "Import TARGET (package.module:function or path/to/file.py:function), a batched "
            "loss fn(model, q, x) (or fn(model, q, x, rng, n_samples) with --mode "
            "statistical), probe it on designed linear-Gaussian problems and print what it "
            "computes in terms of the exact reconstruction and KL terms. Exits 0 when the "
            "loss is a positive multiple of the objective (or the beta-ELBO with the declared "
            "--beta), 1 when it is not, 2 when it cannot be diagnosed."
        ),
    )
    doctor.add_argument("target", help="package.module:function or path/to/file.py:function")
    doctor.add_argument(
        "--objective",
        choices=("loss", "elbo"),
        default="loss",
        help="what the function is meant to return: a loss to minimise (default) or the ELBO",
    )
    doctor.add_argument(
        "--beta", type=_positive_float, default=None, help="a KL weight chosen on purpose"
    )
    doctor.add_argument("--mode", choices=("exact", "statistical"), default="exact")
    doctor.add_argument(
        "--up-to-constant",
        action="store_true",
        help="accept dropped constants (log 2 pi, log det Psi)",
    )
    for name, kinds in (
        ("q-kinds", "full,diagonal"),
        ("prior-kinds", "general,standard"),
        ("noise-kinds", "diagonal,isotropic"),
    ):
        doctor.add_argument(
            f"--{name}", type=_kinds, default=None, metavar="K1,K2", help=f"restrict to ({kinds})"
        )
    doctor.add_argument("--seed", type=seed_type, default=0, help="random seed (default: 0)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")


class TargetError(Exception):
    """TARGET could not be imported or is not callable."""


def load_target(target: str) -> Callable[..., Any]:
    """The callable ``target`` names: ``package.module:attr[.attr]`` or ``file.py:attr``."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise TargetError(f"TARGET must look like package.module:function; got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the project under test
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise TargetError(f"cannot load {module_name}: no such file")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except TargetError:
        raise
    except Exception as err:
        raise TargetError(f"cannot import {module_name}: {type(err).__name__}: {err}") from err
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise TargetError(f"{module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise TargetError(f"{target} is not callable; got a {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def run_doctor(args: argparse.Namespace) -> int:
    """Run the doctor for parsed ``args``; the exit status (0 ok, 1 not ok, 2 error)."""
    from ._errors import InvalidInputError
    from .testing import diagnose_loss

    try:
        fn = load_target(args.target)
        report = diagnose_loss(
            fn,
            objective=args.objective,
            mode=args.mode,
            beta=args.beta,
            up_to_constant=args.up_to_constant,
            q_kinds=args.q_kinds,
            prior_kinds=args.prior_kinds,
            noise_kinds=args.noise_kinds,
            seed=args.seed,
        )
    except (TargetError, InvalidInputError, AssertionError) as err:
        print(f"elbo-check doctor: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1
