"""Run the catalogue of buggy implementations and write the kill matrix.

    python benchmarks/kill_matrix.py [--output docs/kill-matrix.md] [--seeds 5]

Every bug in ``tests/buggy_implementations.py`` is run through its verifier call with
default settings; the table records whether it was caught, the diagnosis line, and how
fast: for the deterministic (hypothesis) verifiers the number of cases tried until the
first failing one and the total including shrinking, for the statistical ones the t
statistic against its critical value. Every correct implementation is then run on the
same verifier calls for seeds ``0 .. seeds - 1`` (the false-alarm side). The loss
doctor's sections (``benchmarks/doctor_matrix.py``, on ``tests/buggy_losses.py``) are
appended.

As under pytest (``filterwarnings = error`` in setup.cfg), warnings raised inside the
code under test are errors. One BLAS thread is used (tiny matrices are far slower when
OpenBLAS threads contend for cores); set ``OPENBLAS_NUM_THREADS`` to override.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import buggy_implementations as catalogue  # noqa: E402
import doctor_matrix  # noqa: E402

from elbo_check import testing  # noqa: E402
from elbo_check.testing import _searching  # noqa: E402


@dataclass
class Result:
    implementation: catalogue.Implementation
    caught: bool
    message: str
    seconds: float
    first_failing_case: int | None


DEV = testing.PROFILES["dev"]


def run(impl: catalogue.Implementation, **overrides: Any) -> Result:
    """Run one verifier call, recording the index of the first failing hypothesis case."""
    first: list[int | None] = [None]
    original: Callable[..., Any] = _searching._search

    def counting_search(
        strategy: Any, is_bad: Callable[[Any], bool], seed: int, max_examples: int
    ) -> Any:
        calls = [0]

        def wrapped(case: Any) -> bool:
            calls[0] += 1
            bad = is_bad(case)
            if bad and first[0] is None:
                first[0] = calls[0]
            return bad

        return original(strategy, wrapped, seed, max_examples)

    _searching._search = counting_search  # the verifiers look it up at call time
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = impl.verify(**overrides)
        caught, message = False, str(report)
    except AssertionError as err:
        caught, message = True, str(err)
    finally:
        _searching._search = original
    return Result(impl, caught, message, time.perf_counter() - start, first[0])


# --------------------------------------------------------------------------- parsing
def _speed(result: Result) -> str:
    """Cases until caught (deterministic) or the t statistic (statistical)."""
    message = result.message
    if not result.caught:
        return "-"
    kind = result.implementation.kind
    if kind in ("iwae_gradient", "dreg_gradient", "vimco_gradient"):
        problem = re.search(r"problem (\d+) of (\d+)", message)
        what = re.search(r"failed: ([^(]+) \(", message)
        if problem and what:
            return f"problem {problem.group(1)} of {problem.group(2)}: {what.group(1)}"
        return "exact check at q = p(z|x)" if "p(z|x)" in message else "?"
    if kind in ("estimator", "iwae_estimator", "renyi_estimator", "iwae_batched"):
        problem = re.search(r"(?:problem|batch) (\d+) of (\d+)", message)
        t = re.search(r"t = (\S+); critical \|t\| = ([\d.e+-]+)", message)
        if problem and t:
            return (
                f"problem {problem.group(1)} of {problem.group(2)}: "
                f"t = {t.group(1)} (critical {t.group(2)})"
            )
        return "deterministic comparison"
    if kind == "statistical_gradient":
        problem = re.search(r"problem (\d+) of (\d+)", message)
        critical = re.search(r"critical \|t\| = ([\d.e+-]+)", message)
        ts = [abs(float(v)) for v in re.findall(r"\(t = (\S+?)\)", message)]
        if problem and critical and ts:
            return (
                f"problem {problem.group(1)} of {problem.group(2)}: "
                f"max t = {max(ts):.3g} (critical {critical.group(1)})"
            )
        return "?"
    total = re.search(r"minimal example after (\d+) cases", message)
    first = result.first_failing_case
    parts = []
    if first is not None:
        parts.append(f"{first}")
    if total:
        parts.append(f"({total.group(1)} with shrinking)")
    return " ".join(parts) or "?"


def _biased_coordinates(message: str) -> list[str]:
    critical = re.search(r"critical \|t\| = ([\d.e+-]+)", message)
    if not critical:
        return []
    limit = float(critical.group(1))
    rows = re.findall(r"^\s+(\S+): exact .*\(t = (\S+?)\)$", message, flags=re.MULTILINE)
    return [name for name, t in rows if abs(float(t)) > limit]


def _diagnosis(result: Result) -> tuple[str, bool | None]:
    """The diagnosis given, and whether it names the expected suspect (None: none expected)."""
    impl = result.implementation
    if not result.caught:
        return "-", None
    named = catalogue.diagnosed_names(result.message)
    expected = impl.diagnosis
    hit = None if expected is None else any(expected in name for name in named)
    if named:
        marks = [("**" + n + "**") if expected and expected in n else n for n in named]
        return "; ".join(marks), hit
    if impl.kind == "statistical_gradient":
        coords = ", ".join(_biased_coordinates(result.message)) or "?"
        return f"(no diagnosis in this mode) biased coordinates: {coords}", hit
    fallback = [line for line in result.message.splitlines() if line.startswith("Diagnosis:")]
    if fallback:
        return fallback[0].removeprefix("Diagnosis: "), hit
    raised = re.search(r"fn raised (\w+: [^\n]*)", result.message)
    if raised:
        return f"(none: fn raised {raised.group(1)})", hit
    return "(none)", hit


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "kill-matrix.md")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the correct code")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = []
    for impl in catalogue.BUGS:
        result = run(impl)
        results.append(result)
        print(f"{impl.name:40s} caught={result.caught!s:5s} {result.seconds:6.2f}s", flush=True)
    bug_seconds = time.perf_counter() - started

    false_alarms = []
    for impl in catalogue.CORRECT:
        option_sets: list[dict[str, Any]] = [{}]
        for bug in catalogue.BUGS:
            if bug.kind == impl.kind and bug.options not in option_sets:
                option_sets.append(bug.options)
        for options in option_sets:
            runs = [run(impl, seed=seed, **options) for seed in range(args.seeds)]
            false_alarms.append((impl, options, runs))
            print(f"{impl.name:40s} {options} passed {sum(not r.caught for r in runs)}/{len(runs)}")
    total_seconds = time.perf_counter() - started

    expected_caught = [r for r in results if not r.implementation.known_gap]
    caught = sum(r.caught for r in expected_caught)
    diagnosable = [r for r in results if r.implementation.diagnosis]
    named = sum(bool(_diagnosis(r)[1]) for r in diagnosable)
    ambiguous = [
        r.implementation.name
        for r in results
        if r.caught and len(catalogue.diagnosed_names(r.message)) > 1
    ]
    gaps = [r for r in results if r.implementation.known_gap]
    alarms = sum(r.caught for _, _, runs in false_alarms for r in runs)
    alarm_runs = sum(len(runs) for _, _, runs in false_alarms)

    lines = [
        "# Kill matrix",
        "",
        "Generated by `python benchmarks/kill_matrix.py` from the catalogue in",
        "`tests/buggy_implementations.py` (checked by `tests/test_kill_matrix.py`): realistic",
        "bugs written from scratch in plain numpy, each run through its verifier call with",
        f"default settings (seed 0, profile `dev`: {DEV['max_examples']} hypothesis examples; "
        f"{DEV['problems']} problems x {DEV['calls']}",
        "calls x 8 samples for the statistical checks, false-alarm rate 1e-6).",
        "",
        "## Summary",
        "",
        f"- {len(results)} catalogue entries ({len({r.implementation.fn for r in results})} "
        f"distinct buggy functions).",
        f"- Caught with default settings: **{caught} of {len(expected_caught)}** "
        f"(plus {len(gaps)} known gap(s), listed below).",
        f"- Diagnosis names the bug: **{named} of {len(diagnosable)}** entries for which a "
        "suspect exists; "
        f"{len(results) - len(diagnosable)} entries have no suspect (no diagnosis expected).",
        f"- More than one suspect named (indistinguishable on the probes): "
        f"{', '.join(ambiguous) or 'none'}.",
        f"- False alarms of the correct implementations: **{alarms} of {alarm_runs}** runs "
        f"(seeds 0..{args.seeds - 1} on every verifier call used above).",
        f"- Runtime: {bug_seconds:.1f} s for the bugs, {total_seconds:.1f} s in total "
        f"(one process; Python {platform.python_version()}, numpy {np.__version__}, "
        f"hypothesis {hypothesis.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}).",
        "",
        "## Bugs",
        "",
        "Diagnosis: the suspect names on the failure's `Diagnosis:` lines; the expected one is",
        "in bold. Cases until caught: the index of the first failing hypothesis case, then the",
        "total including shrinking. Statistical checks: the t statistic of the first biased",
        "problem against its Bonferroni-corrected critical value.",
        "",
        # The results first: at 1280 px the description and the call would push them
        # off-screen.
        "| bug | caught? | diagnosis given | cases until caught / t statistic | time (s) | "
        "kind | description | verifier call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        impl = result.implementation
        diagnosis, hit = _diagnosis(result)
        verdict = "yes" if result.caught else "**no** (known gap)" if impl.known_gap else "**NO**"
        if hit is False:
            diagnosis = f"**misnamed**: {diagnosis}"
        lines.append(
            "| "
            + " | ".join(
                _cell(cell)
                for cell in (
                    f"`{impl.name}`",
                    verdict,
                    diagnosis,
                    _speed(result),
                    f"{result.seconds:.2f}",
                    impl.kind,
                    impl.description,
                    f"`{impl.call_text()}`",
                )
            )
            + " |"
        )
    if gaps:
        lines += ["", "## Known gaps", ""]
        for result in gaps:
            lines.append(f"- `{result.implementation.name}`: {result.implementation.known_gap}.")
    lines += [
        "",
        "## Correct implementations (false-alarm side)",
        "",
        "| implementation | verifier call | passed | worst error / tolerance | time (s) |",
        "|---|---|---|---|---|",
    ]
    for impl, options, runs in false_alarms:
        worst = []
        for r in runs:
            found = re.search(r"worst error (\S+);", r.message)
            if found:
                worst.append(float(found.group(1)))
        call = impl.call_text().removesuffix(")")
        extra = ", ".join(f"{k}={v!r}" for k, v in options.items())
        call = f"{call}{', ' + extra if extra else ''}, seed=0..{args.seeds - 1})"
        lines.append(
            f"| `{impl.name}` | `{_cell(call)}` | {sum(not r.caught for r in runs)}/{len(runs)} "
            f"| {max(worst) if worst else float('nan'):.3g} "
            f"| {sum(r.seconds for r in runs):.2f} |"
        )
    lines.append("")
    doctor_lines, doctor_ok = doctor_matrix.sections(args.seeds)
    lines += doctor_lines
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")
    return 0 if caught == len(expected_caught) and alarms == 0 and doctor_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
