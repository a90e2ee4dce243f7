"""The diagnosis names bugs it was not written for, and never names one wrongly.

``tests/heldout_bugs.py`` is a held-out set of realistic ELBO / KL / log-evidence bugs
written before the term-level diagnosis (``elbo_check/testing/_term_fit.py``) and
independently of the kill matrix. Each verifier runs with default settings; the
``Diagnosis:`` line is judged against what the bug's entry accepts:

* no bug is named wrongly (a wrong name sends the user after the wrong term: worse
  than "no known bug matches");
* at least ``NAMED_FLOOR`` bugs are named correctly (measured at seed 0: 34 of 38 named
  right under the "ci" hypothesis profile, 33 under "dev", 0 wrong; not named: an
  importance-weighted bound, a residual taken at the prior mean and E_prior log p(x|z)
  returned as log p(x), which no term-level perturbation expresses; not caught: a
  float32 KL, within the default tolerance, and under "dev" a float32 ELBO, whose
  rounding error the dev profile's search does not push past float32's tolerance);
* the names do not depend on the seed (measured: every name identical at seeds 0..4,
  except a float32 log p(x) the default tolerance does not catch at seed 2; here seed 1
  for a sample of the set, float32 bugs left out for time).

Runtime: about 5 minutes with ``OPENBLAS_NUM_THREADS=1`` (hypothesis shrinks every
failing case; the diagnosis itself takes about a second per bug).
"""

from __future__ import annotations

import pytest
from heldout_bugs import HELDOUT, HeldOut, judge, run

#: Held-out bugs the diagnosis must name correctly at seed 0 (measured: 34 of 38 under
#: the "ci" hypothesis profile, 33 under "dev", the profile of a plain local run).
NAMED_FLOOR = 33

_VERDICTS: dict[tuple[str, int], tuple[str, list[str]]] = {}


def _verdict(bug: HeldOut, seed: int = 0) -> tuple[str, list[str]]:
    key = (bug.name, seed)
    if key not in _VERDICTS:
        _VERDICTS[key] = judge(bug, run(bug, seed))
    return _VERDICTS[key]


@pytest.mark.parametrize("bug", HELDOUT, ids=lambda b: b.name)
def test_never_named_wrongly(bug: HeldOut) -> None:
    verdict, names = _verdict(bug)
    assert verdict != "wrong", f"{bug.name} was diagnosed as {names}"


def test_named_count_floor() -> None:
    verdicts = [_verdict(bug)[0] for bug in HELDOUT]
    named = verdicts.count("right")
    assert named >= NAMED_FLOOR, f"named {named} of {len(HELDOUT)} (floor {NAMED_FLOOR})"


#: A sample for the seed test; float32 rounding bugs are left out (each takes a minute of
#: hypothesis shrinking at the edge of the tolerance; measured identical at seeds 0..4).
_SAMPLE = [b for b in HELDOUT if b.accept and "float32" not in b.name][::5]


@pytest.mark.parametrize("bug", _SAMPLE, ids=lambda b: b.name)
@pytest.mark.parametrize("seed", [1])
def test_name_does_not_depend_on_the_seed(bug: HeldOut, seed: int) -> None:
    first, names = _verdict(bug)
    again, other = _verdict(bug, seed)
    if first == "missed" or again == "missed":
        pytest.skip("not caught")
    assert names == other, f"seed 0 said {names}, seed {seed} said {other}"
