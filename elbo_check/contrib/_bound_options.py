"""The options of the adapters' checks of a library's Rényi-bound loss.

Private, and free of any framework: :mod:`elbo_check.contrib.pyro` and
:mod:`elbo_check.contrib.numpyro` document the behaviour. The bound's order ``alpha``
and its number of samples ``k`` are the loss's (its ``alpha`` and ``num_particles``
attributes); an ``alpha=`` or ``k=`` the caller passes must agree with them.
"""

from __future__ import annotations

from typing import Any

from .._errors import InvalidInputError
from ..testing._bound_estimator_checks import check_alpha, check_k

#: The autoguide whose sampler is not ``z = m + L eps`` with q's Cholesky factor ``L``.
LOW_RANK = "AutoLowRankMultivariateNormal"


def low_rank_gradient_options(guide: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The gradient check's options for ``guide``: the low-rank guide samples ``z = m +
    W eps_W + sqrt(D) eps_D``, not ``z = m + L eps`` with q's Cholesky factor ``L``, so
    its gradient estimates have the right mean but another distribution than the
    verifier's reference draws: for it only the means are tested
    (``distribution_test=False``); asking for the distribution test is refused."""
    if not (isinstance(guide, str) and guide == LOW_RANK):
        return options
    if options.get("distribution_test", False) is True:
        raise InvalidInputError(
            f"distribution_test=True cannot be used with guide={LOW_RANK!r}: it samples "
            "z = loc + W eps_W + sqrt(D) eps_D (LowRankMultivariateNormal.rsample), so its "
            "gradient estimates have the right mean but not the distribution of the "
            "verifier's reference draws at z = m + L eps (L the Cholesky factor of q's "
            "covariance); leave it out and the means are tested"
        )
    return {**options, "distribution_test": False}


def bound_options(loss: Any, options: dict[str, Any], *, library: str) -> dict[str, Any]:
    """The keyword options of the core verifier: ``alpha`` and ``k`` from the loss,
    ``mode="statistical"``, the rest of ``options`` as given (the verifier checks them).

    A loss without an ``alpha`` attribute (``Trace_ELBO``, ...) is checked against the
    bound the caller names with ``alpha=``; without one it is refused.
    """
    chosen = dict(options)
    mode = chosen.pop("mode", "statistical")
    if mode != "statistical":
        raise InvalidInputError(
            f"mode must be 'statistical' for a {library} loss's Rényi bound; got mode={mode!r}: "
            "a Monte-Carlo loss has no exact mode, and the pathwise mode pins the guide's one "
            "Gaussian sample to one row of noise, so every one of the loss's num_particles "
            "particles would be that same sample and the estimate its single log weight: "
            "the reduction over particles, which is what this check is for, would go untested"
        )
    if "n_samples" in chosen:
        raise InvalidInputError(
            f"n_samples is not an option here: the number of samples is k, the loss's "
            f"num_particles ({getattr(loss, 'num_particles', 1)!r}); got "
            f"n_samples={chosen['n_samples']!r}"
        )
    declared = getattr(loss, "alpha", None)
    if declared is None:
        if "alpha" not in chosen:
            raise InvalidInputError(
                f"{type(loss).__name__} has no alpha (it is not a RenyiELBO): pass alpha= to "
                "name the bound its estimate should follow (alpha=1: the ELBO, whose "
                "num_particles-sample estimate is the mean of the log weights; alpha=0: the "
                "IWAE bound)"
            )
        alpha = check_alpha(chosen.pop("alpha"))
    else:
        try:
            alpha = check_alpha(declared)
        except InvalidInputError as err:
            raise InvalidInputError(
                f"the loss's alpha must be a finite real number; got {declared!r}"
            ) from err
        if "alpha" in chosen and check_alpha(chosen.pop("alpha")) != alpha:
            raise InvalidInputError(
                f"alpha is the loss's alpha ({declared!r}); got alpha={options['alpha']!r}"
            )
    particles = getattr(loss, "num_particles", 1)
    try:
        k = check_k(particles)
    except InvalidInputError as err:
        raise InvalidInputError(
            f"the loss's num_particles must be an integer >= 1; got {particles!r}"
        ) from err
    if "k" in chosen and check_k(chosen.pop("k")) != k:
        raise InvalidInputError(f"k is the loss's num_particles ({k}); got k={options['k']!r}")
    return {**chosen, "alpha": alpha, "k": k, "mode": "statistical"}
