"""The README's example runs as printed (with a correct ``my_elbo`` standing in)."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python")[1:]]


def test_readme_has_one_example() -> None:
    """The README stays short: one Python example."""
    assert len(_python_blocks()) == 1


def test_readme_example_runs_and_its_verifier_catches_a_bug() -> None:
    """With a correct ELBO the example passes; with the entropy dropped it raises."""
    (source,) = _python_blocks()
    exec(source, {"my_elbo": lambda model, q, x: model.elbo(q, x)})
    with pytest.raises(AssertionError, match="entropy term H\\(q\\) is missing"):
        exec(source, {"my_elbo": lambda model, q, x: model.elbo(q, x) - q.entropy()})
