"""Hypothesis strategies for linear-Gaussian models, variational Gaussians and data.

Every strategy builds a valid object directly — no filtering — from draws that
shrink toward the simplest case: eigenvalue exponents toward 0 (a scaled identity),
rotation angles toward 0 (no rotation), means, offsets and weights toward 0, kinds
toward the first listed one. A failing example therefore shrinks to the smallest
dimensions and the least structure that still exhibits the bug, while the defaults
reach the blind spots where bugs hide: non-zero offsets and prior means, full prior,
noise and variational covariances, anisotropic noise, condition numbers well above 1,
and latent dimension larger than data dimension.

Examples
--------
>>> from hypothesis import given
>>> from elbo_check.strategies import linear_gaussian_models
>>> @given(linear_gaussian_models(max_data_dim=3))
... def test_evidence_is_finite(model):
...     assert abs(model.log_evidence(model.bias)) < float("inf")
>>> test_evidence_is_finite()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from numpy.typing import NDArray

from . import _strategy_blocks as _b
from ._gaussian import Gaussian
from ._gp_strategies import (
    KERNEL_KINDS,
    gp_inputs,
    gp_kernels,
    gp_problems,
    gp_regressions,
    sparse_gps,
)
from ._model import LinearGaussianModel
from ._strategy_blocks import COV_KINDS as COV_KINDS
from ._strategy_blocks import gaussians, rotations, spd_matrices

__all__ = [
    "KERNEL_KINDS",
    "NOISE_KINDS",
    "PRIOR_KINDS",
    "ElboProblem",
    "elbo_problems",
    "gaussians",
    "gp_inputs",
    "gp_kernels",
    "gp_problems",
    "gp_regressions",
    "linear_gaussian_models",
    "observations",
    "rotations",
    "sparse_gps",
    "spd_matrices",
    "variational_gaussians",
]

FloatArray = NDArray[np.float64]

#: Noise covariance kinds, simplest first (hypothesis shrinks toward the first).
NOISE_KINDS = ("isotropic", "diagonal", "full")
#: Prior kinds, simplest first: N(0, I), N(mu0, diag), N(mu0, full S0).
PRIOR_KINDS = ("standard", "diagonal", "general")


# ---------------------------------------------------------------------- models
def linear_gaussian_models(
    *,
    min_data_dim: int = 1,
    max_data_dim: int = 6,
    min_latent_dim: int = 1,
    max_latent_dim: int = 6,
    noise_kinds: Sequence[str] = NOISE_KINDS,
    prior_kinds: Sequence[str] = PRIOR_KINDS,
    max_condition_number: float = 1e3,
    max_abs_bias: float = 5.0,
    max_abs_weight: float = 2.0,
    extreme_scales: bool = False,
) -> st.SearchStrategy[LinearGaussianModel]:
    """Random well-posed :class:`~elbo_check.LinearGaussianModel` instances.

    A model is ``z ~ N(mu0, S0)``, ``x | z ~ N(W z + b, Psi)`` with ``D`` and ``K``
    drawn from their ranges, every entry of ``W`` in ``[-max_abs_weight,
    max_abs_weight]`` and of ``b`` in ``[-max_abs_bias, max_abs_bias]``. The prior is
    ``N(0, I)`` (``"standard"``), or has a mean with entries in ``[-max_abs_bias,
    max_abs_bias]`` and a diagonal (``"diagonal"``) or full (``"general"``) covariance
    with eigenvalues in [0.3, 3 * max_condition_number]. The noise covariance is
    ``sigma^2 I`` (``"isotropic"``, ``sigma^2`` in [0.1, 10**0.5]), diagonal or full, with
    condition number at most ``max_condition_number``.

    Examples shrink toward the simplest model: the smallest ``D`` and ``K``, zero
    weights and offset, the first kind listed of prior and noise (``N(0, I)`` and
    unit isotropic noise by default).

    Parameters
    ----------
    min_data_dim, max_data_dim : int, optional
        Bounds on the data dimension ``D``, integers >= 1 with ``min <= max``
        (defaults 1 and 6).
    min_latent_dim, max_latent_dim : int, optional
        Bounds on the latent dimension ``K``, likewise (defaults 1 and 6; by default
        ``K > D`` occurs as often as ``K < D``).
    noise_kinds : sequence of {"isotropic", "diagonal", "full"}, optional
        Which forms of the noise covariance to draw (default :data:`NOISE_KINDS`, all).
    prior_kinds : sequence of {"standard", "diagonal", "general"}, optional
        Which priors to draw (default :data:`PRIOR_KINDS`, all): ``"standard"`` is
        ``N(0, I)``; the others have a non-zero mean.
    max_condition_number : float, optional
        Bound on the condition number of the prior and noise covariances, finite and
        >= 1 (default 1e3). The marginal covariance ``W S0 W^T + Psi`` is not bounded
        by it.
    max_abs_bias : float, optional
        Bound on the entries of ``b`` and of the prior mean, finite and >= 0 (default
        5.0).
    max_abs_weight : float, optional
        Bound on the entries of ``W``, finite and >= 0 (default 2.0).
    extreme_scales : bool, optional
        Opt in (default False) to overall variance scales ``10**u``, ``|u| <= 160``:
        the noise covariance is multiplied by the scale, ``W`` and ``b`` by its square
        root. For ``D >= 3`` the determinant of the noise covariance then under- or
        overflows float64 while log-determinants from factors do not.

    Returns
    -------
    SearchStrategy[LinearGaussianModel]
        Draws :class:`~elbo_check.LinearGaussianModel` objects within these bounds.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if a dimension bound is not an integer >= 1 or a minimum exceeds
        its maximum, a kinds selection is empty or names an unknown kind,
        ``max_condition_number`` is not a finite number >= 1, ``max_abs_bias`` or
        ``max_abs_weight`` is not a finite number >= 0, or ``extreme_scales`` is not a
        bool.

    See Also
    --------
    elbo_problems : A model together with a variational distribution and data.

    Examples
    --------
    The ELBO at the exact posterior is the log-evidence, for every model:

    >>> import numpy as np
    >>> from hypothesis import find, given, settings
    >>> from elbo_check.strategies import linear_gaussian_models
    >>> @settings(max_examples=20, deadline=None)
    ... @given(linear_gaussian_models(max_data_dim=3, max_latent_dim=3))
    ... def test_elbo_is_tight_at_the_posterior(model):
    ...     x = model.marginal_mean
    ...     assert np.isclose(model.elbo(model.posterior(x), x), model.log_evidence(x))
    >>> test_elbo_is_tight_at_the_posterior()

    A failing example shrinks to the simplest model that still fails:

    >>> model = find(linear_gaussian_models(), lambda m: m.latent_dim > m.data_dim)
    >>> model
    LinearGaussianModel(data_dim=1, latent_dim=2, noise_kind='isotropic')
    >>> linear_gaussian_models(min_data_dim=3, max_data_dim=2)
    Traceback (most recent call last):
        ...
    hypothesis.errors.InvalidArgument: min_data_dim=3 must be <= max_data_dim=2
    """
    _b.check_bounds("min_data_dim", min_data_dim, "max_data_dim", max_data_dim)
    _b.check_bounds("min_latent_dim", min_latent_dim, "max_latent_dim", max_latent_dim)
    _b.check_real("max_condition_number", max_condition_number, minimum=1.0)
    _b.check_real("max_abs_bias", max_abs_bias, minimum=0.0)
    _b.check_real("max_abs_weight", max_abs_weight, minimum=0.0)
    return _b.model_strategy(
        st.integers(min_data_dim, max_data_dim),
        st.integers(min_latent_dim, max_latent_dim),
        _b.check_kinds("noise_kinds", noise_kinds, NOISE_KINDS),
        _b.check_kinds("prior_kinds", prior_kinds, PRIOR_KINDS),
        float(max_condition_number),
        float(max_abs_bias),
        float(max_abs_weight),
        _b.check_flag("extreme_scales", extreme_scales),
    )


def _check_model(model: Any) -> LinearGaussianModel:
    if not isinstance(model, LinearGaussianModel):
        raise InvalidArgument(f"model={model!r} must be a LinearGaussianModel")
    return model


# ---------------------------------------------------------------------- q and x
def variational_gaussians(
    model: LinearGaussianModel,
    *,
    batch_shape: tuple[int, ...] = (),
    max_abs_mean: float = 3.0,
    max_condition_number: float = 100.0,
    min_scale: float = 0.05,
    max_scale: float = 5.0,
    cov_kinds: Sequence[str] = COV_KINDS,
    shared_covariance: bool = True,
) -> st.SearchStrategy[Gaussian]:
    """Variational distributions ``q(z)`` over the latent space of ``model``.

    A draw of :func:`gaussians` of dimension ``K`` shifted by the prior mean: means
    are centred on the prior mean (so they are of the model's scale) and shrink to
    it; covariances are full by default and shrink toward isotropic. A batch shares
    one covariance unless ``shared_covariance=False`` (an encoder that outputs a
    covariance per row).

    Parameters
    ----------
    model : LinearGaussianModel
        The model whose latent space ``q`` lives in (its ``K`` and prior mean).
    batch_shape : tuple of int, optional
        The batch shape (default ``()``: one q).
    max_abs_mean : float, optional
        Bound on ``|q.mean - prior mean|`` per entry, finite and >= 0 (default 3.0).
    max_condition_number : float, optional
        Bound on the condition number of each covariance, finite and >= 1 (default
        100.0).
    min_scale, max_scale : float, optional
        The range of the scale of each covariance (its smallest variance or
        eigenvalue): finite, > 0, ``min_scale <= max_scale`` (defaults 0.05 and 5.0).
    cov_kinds : sequence of {"isotropic", "diagonal", "full"}, optional
        The covariance kinds to draw (default all three; ``("diagonal",)`` for a
        mean-field guide).
    shared_covariance : bool, optional
        With a ``batch_shape``: one covariance for all members (True, default) or one
        per member (False).

    Returns
    -------
    SearchStrategy[Gaussian]
        Draws :class:`~elbo_check.Gaussian` objects of dimension ``model.latent_dim``
        with a mean of shape ``batch_shape + (K,)``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``model`` is not a :class:`~elbo_check.LinearGaussianModel`,
        or any other argument is refused as by :func:`gaussians`.

    Examples
    --------
    The ELBO of any q is a lower bound on the log-evidence:

    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check import ppca
    >>> from elbo_check.strategies import variational_gaussians
    >>> model = ppca(weights=[[1.0, 0.5], [0.0, 1.0], [0.5, -0.5]], mean=[0.0, 1.0, -1.0],
    ...              noise_variance=0.5)
    >>> x = np.array([0.5, 1.5, -1.0])
    >>> @settings(max_examples=20, deadline=None)
    ... @given(variational_gaussians(model, batch_shape=(4,)))
    ... def test_elbo_is_a_lower_bound(q):
    ...     assert q.mean.shape == (4, 2)
    ...     assert np.all(model.elbo(q, x) <= model.log_evidence(x) + 1e-12)
    >>> test_elbo_is_a_lower_bound()
    """
    model = _check_model(model)
    base = gaussians(
        model.latent_dim,
        batch_shape=batch_shape,
        max_abs_mean=max_abs_mean,
        max_condition_number=max_condition_number,
        min_scale=min_scale,
        max_scale=max_scale,
        cov_kinds=cov_kinds,
        shared_covariance=shared_covariance,
    )
    return base.map(lambda g: _centred_on_prior(model, g))


def _centred_on_prior(model: LinearGaussianModel, g: Gaussian) -> Gaussian:
    return Gaussian._trusted(g.mean + model.prior.mean, g.scale_tril)


def _around_mean(
    model: LinearGaussianModel, u: FloatArray, batch_shape: tuple[int, ...]
) -> FloatArray:
    spread = np.sqrt(model.marginal_variances())
    return np.asarray(
        model.marginal_mean + spread * u.reshape(*batch_shape, model.data_dim), np.float64
    )


def observations(
    model: LinearGaussianModel,
    *,
    batch_shape: tuple[int, ...] = (),
    max_abs_deviation: float = 4.0,
) -> st.SearchStrategy[FloatArray]:
    """Observations ``x`` of shape ``batch_shape + (D,)`` around the model's mean.

    ``x = mean + sqrt(diag C) * u`` with the marginal mean ``W mu0 + b`` and variances
    ``diag C`` of ``p(x)``, and every entry of ``u`` within ``max_abs_deviation``
    standard deviations; ``u`` shrinks to 0, so ``x`` shrinks to the mean.

    Parameters
    ----------
    model : LinearGaussianModel
        The model whose data space ``x`` lives in.
    batch_shape : tuple of int, optional
        The batch shape (default ``()``: one observation of shape ``(D,)``).
    max_abs_deviation : float, optional
        Bound on ``|x - mean|`` in marginal standard deviations, per entry, finite and
        >= 0 (default 4.0).

    Returns
    -------
    SearchStrategy[ndarray]
        Draws float64 arrays of shape ``batch_shape + (D,)``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``model`` is not a :class:`~elbo_check.LinearGaussianModel`,
        ``max_abs_deviation`` is not a finite number >= 0, or ``batch_shape`` is not a
        tuple (or list) of integers >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check import ppca
    >>> from elbo_check.strategies import observations
    >>> model = ppca(weights=[[1.0, 0.5], [0.0, 1.0], [0.5, -0.5]], mean=[0.0, 1.0, -1.0],
    ...              noise_variance=0.5)
    >>> @settings(max_examples=20, deadline=None)
    ... @given(observations(model, batch_shape=(5,), max_abs_deviation=2.0))
    ... def test_within_two_standard_deviations(x):
    ...     assert x.shape == (5, 3)
    ...     z = (x - model.marginal_mean) / np.sqrt(model.marginal_variances())
    ...     assert np.all(np.abs(z) <= 2.0 + 1e-12)
    >>> test_within_two_standard_deviations()
    """
    model = _check_model(model)
    _b.check_real("max_abs_deviation", max_abs_deviation, minimum=0.0)
    shape = _b.check_batch_shape(batch_shape)
    size = int(np.prod(shape, dtype=int)) * model.data_dim
    return _b.vectors(size, float(max_abs_deviation)).map(lambda u: _around_mean(model, u, shape))


# ---------------------------------------------------------------------- problems
@dataclass(frozen=True)
class ElboProblem:
    """A model, a variational distribution and an observation: one ELBO to compute.

    What :func:`elbo_problems` draws, and what the verifiers of
    :mod:`elbo_check.testing` accept as your own problems (``problems=``). The fields
    are stored as given (not validated, not copied); the instance is frozen.

    Parameters
    ----------
    model : LinearGaussianModel
        The model, of data dimension ``D`` and latent dimension ``K``.
    q : Gaussian
        A variational distribution over the model's latent space (dimension ``K``); a
        batch of them, one per row of ``x``, for batched problems.
    x : ndarray, shape batch_shape + (D,)
        The observation(s).

    Raises
    ------
    TypeError
        If a field is missing or unknown (the generated ``__init__``); nothing else is
        checked here.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> from elbo_check.strategies import ElboProblem
    >>> model = ppca(weights=[[1.0, 0.5]], mean=[0.0], noise_variance=0.5)
    >>> problem = ElboProblem(model, Gaussian.standard(2), np.array([0.7]))
    >>> print(f"{problem.model.elbo(problem.q, problem.x):.6f}")  # q = N(0, I), the prior
    -2.312365
    """

    model: LinearGaussianModel
    q: Gaussian
    x: FloatArray


def elbo_problems(
    *,
    batch_shape: tuple[int, ...] = (),
    shared_covariance: bool = True,
    q_kinds: Sequence[str] = COV_KINDS,
    **model_options: Any,
) -> st.SearchStrategy[ElboProblem]:
    """``(model, q, x)`` triples: a model, a variational distribution and data.

    The model is a draw of :func:`linear_gaussian_models` (with ``model_options``),
    then ``q`` as :func:`variational_gaussians` and ``x`` as :func:`observations` draw
    them for it, with their defaults. The defaults reach the cases where ELBO bugs
    hide (``K > D``, full and anisotropic noise, non-zero prior mean and offset, full
    and ill-conditioned q); each part shrinks as its strategy does.

    Parameters
    ----------
    batch_shape : tuple of int, optional
        With a batch shape, ``q`` and ``x`` are batches of that shape, one q per row of
        ``x`` (default ``()``: one q and ``x`` of shape ``(D,)``).
    shared_covariance : bool, optional
        With a ``batch_shape``: the q's share one covariance (True, default) or have
        one each (False).
    q_kinds : sequence of {"isotropic", "diagonal", "full"}, optional
        The covariance kinds of q (default all three; ``("diagonal",)`` for a
        mean-field guide such as Pyro's ``AutoNormal``).
    **model_options
        Keyword arguments of :func:`linear_gaussian_models` (``max_data_dim``,
        ``noise_kinds``, ``extreme_scales``, ...).

    Returns
    -------
    SearchStrategy[ElboProblem]
        Draws :class:`ElboProblem` objects: ``q.mean`` of shape ``batch_shape + (K,)``
        and ``x`` of shape ``batch_shape + (D,)``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if a model option is refused by :func:`linear_gaussian_models`,
        ``q_kinds`` is empty or names an unknown kind, ``batch_shape`` is not a tuple
        (or list) of integers >= 0, or ``shared_covariance`` is not a bool.
    TypeError
        At the call, for a keyword that is not an option of
        :func:`linear_gaussian_models`.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import elbo_problems
    >>> @settings(max_examples=20, deadline=None)
    ... @given(elbo_problems(batch_shape=(3,), max_data_dim=3, max_latent_dim=3))
    ... def test_log_evidence_is_elbo_plus_kl(problem):
    ...     model, q, x = problem.model, problem.q, problem.x
    ...     assert x.shape == (3, model.data_dim) and q.batch_shape == (3,)
    ...     gap = model.log_evidence(x) - model.elbo(q, x)
    ...     assert np.allclose(gap, model.kl_to_posterior(q, x))
    >>> test_log_evidence_is_elbo_plus_kl()
    """
    models = linear_gaussian_models(**model_options)
    shared = _b.check_flag("shared_covariance", shared_covariance)
    kinds = _b.check_kinds("q_kinds", q_kinds, COV_KINDS)

    shape = _b.check_batch_shape(batch_shape)
    count = int(np.prod(shape, dtype=int))

    @st.composite
    def problems(draw: st.DrawFn) -> ElboProblem:
        # The defaults of variational_gaussians and observations, from cached strategies.
        model = draw(models)
        k = model.latent_dim
        g = draw(_b.gaussian_strategy(k, shape, 3.0, 100.0, 0.05, 5.0, kinds, shared))
        u = draw(_b.vectors(count * model.data_dim, 4.0))
        return ElboProblem(model, _centred_on_prior(model, g), _around_mean(model, u, shape))

    return problems()
