"""check_elbo: the single-case check, for objects drawn inside the user's own ``@given``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._options import check_tolerance
from ._problems import _elbo_scale
from ._report import _numbers
from ._returns import BadReturn, to_scalar

__all__ = ["check_elbo"]


def check_elbo(
    value: Any,
    model: LinearGaussianModel,
    q: Gaussian,
    x: Any,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    r"""Assert that ``value`` is the ELBO of ``q`` at one observation ``x``.

    The single-case check, for objects drawn inside your own hypothesis test (a
    ``verify_*`` function runs a search of its own and does not belong inside
    ``@given``). It passes, silently, when

    .. math::
        |\mathtt{value} - \mathrm{ELBO}(q)| \le \mathtt{rtol}\,
        \bigl(|\mathbb E_q[\log p(x\mid z)]| + \mathrm{KL}(q\,\|\,p(z)) + 1\bigr)
        + \mathtt{atol},

    with :math:`\mathrm{ELBO}(q) = \mathbb E_q[\log p(x\mid z)] - \mathrm{KL}(q\,\|\,p(z))`
    [1]_ computed exactly by :meth:`~elbo_check.LinearGaussianModel.elbo`.

    Parameters
    ----------
    value : float
        The ELBO your code computed, in nats: a real scalar (Python, numpy, torch or
        JAX). The tolerance does not follow its precision: for float32 code loosen
        ``rtol`` to about 1e-4.
    model : LinearGaussianModel
        The model.
    q : Gaussian
        One Gaussian (no batch axes) of the model's latent dimension ``K``.
    x : array_like, shape (D,)
        One observation.
    rtol : float, optional
        Relative tolerance, of the magnitude of the ELBO's terms (default 1e-6); a
        finite number >= 0.
    atol : float, optional
        Absolute tolerance in nats (default 1e-8); a finite number >= 0.

    Raises
    ------
    AssertionError
        If ``value`` is outside the tolerance, NaN or infinite; the message shows the
        expected and the given value, the gap and the tolerance.
    InvalidTypeError
        If ``model`` is not a :class:`~elbo_check.LinearGaussianModel` or ``q`` not a
        :class:`~elbo_check.Gaussian`.
    InvalidInputError
        If ``value`` is not one real number (None, a string, an array of several),
        ``rtol`` or ``atol`` is not a finite number >= 0, ``q`` is a batch or not of
        dimension ``K``, or ``x`` is not one finite observation of shape ``(D,)``.

    See Also
    --------
    verify_elbo : Checks an ELBO function on many problems, with a diagnosis.

    References
    ----------
    .. [1] D. M. Blei, A. Kucukelbir and J. D. McAuliffe, "Variational inference: a
       review for statisticians", Journal of the American Statistical Association
       112(518):859-877, 2017.

    Examples
    --------
    An ELBO written out by hand (the expected log-likelihood minus the KL to the prior):

    >>> import numpy as np
    >>> from elbo_check import Gaussian, kl_divergence, ppca
    >>> from elbo_check.testing import check_elbo
    >>> def my_elbo(model, q, x):
    ...     w, psi = model.weights, model.dense_noise_cov()
    ...     r = x - w @ q.mean - model.bias
    ...     ell = -0.5 * (np.linalg.slogdet(2 * np.pi * psi)[1] + r @ np.linalg.solve(psi, r)
    ...                   + np.trace(np.linalg.solve(psi, w @ q.cov @ w.T)))
    ...     return ell - kl_divergence(q, model.prior)
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> check_elbo(my_elbo(model, q, x), model, q, x)
    >>> check_elbo(my_elbo(model, q, x) + 1e-3, model, q, x)
    Traceback (most recent call last):
      ...
    AssertionError: ELBO mismatch
      expected -4.748705...
      got      -4.747705...
      gap (got - expected) = 0.001; tolerance 5.76e-06

    Inside a hypothesis test, on drawn problems:

    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import elbo_problems
    >>> @settings(max_examples=3, database=None, deadline=None)
    ... @given(elbo_problems())
    ... def test_my_elbo(problem):
    ...     model, q, x = problem.model, problem.q, problem.x
    ...     check_elbo(my_elbo(model, q, x), model, q, x)
    >>> test_my_elbo()
    """
    __tracebackhide__ = True
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    if not isinstance(model, LinearGaussianModel):
        raise InvalidTypeError(f"model must be a LinearGaussianModel; got {type(model).__name__}")
    exact = model.elbo(q, x)
    if np.ndim(exact) != 0:
        raise InvalidInputError(
            "check_elbo checks one ELBO: q and x must not be batches; got q.batch_shape "
            f"{q.batch_shape} and x of shape {np.shape(x)} (use verify_elbo with batch_size "
            "for batched code)"
        )
    expected = float(exact)
    try:
        got = to_scalar(value, "value", returned=False)
    except BadReturn as err:
        raise InvalidInputError(str(err)) from None
    tolerance = rtol * _elbo_scale(model, q, np.asarray(x, dtype=np.float64)) + atol
    if not abs(got - expected) <= tolerance:
        raise AssertionError("ELBO mismatch\n" + _numbers(got, expected, tolerance))
