"""The README's example runs as printed (correct ``my_elbo``, ``my_batched_elbo``)."""

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

    def correct(model: object, q: object, x: object) -> object:
        return model.elbo(q, x)  # type: ignore[attr-defined]

    def mean_reduced(model: object, q: object, x: object) -> object:
        values = model.elbo(q, x)  # type: ignore[attr-defined]
        return values * 0 + values.mean()  # BUG: one value for the whole batch

    exec(source, {"my_elbo": correct, "my_batched_elbo": correct})
    with pytest.raises(AssertionError, match="entropy term H\\(q\\) is missing"):
        exec(
            source,
            {
                "my_elbo": lambda model, q, x: model.elbo(q, x) - q.entropy(),
                "my_batched_elbo": correct,
            },
        )
    with pytest.raises(AssertionError, match="the members of a batch interact"):
        exec(source, {"my_elbo": correct, "my_batched_elbo": mean_reduced})
