"""The setup of :mod:`elbo_check.contrib.numpyro`'s checks: the loss, the guide, the
precision and the verifier's options.

Private; :mod:`elbo_check.contrib.numpyro` documents the behaviour. Shared by its
verifiers of the ELBO (``numpyro.py``) and of the Rényi bounds (``_numpyro_renyi.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from ..testing import Parametrisation, VerificationReport
from . import _numpyro_handlers as _h

try:
    import jax
    import numpyro
except ImportError as err:  # pragma: no cover - _numpyro_handlers raised already
    raise ImportError(
        "elbo_check.contrib.numpyro needs NumPyro and JAX, which are not installed; "
        "install them with: pip install numpyro jax"
    ) from err


def check_loss(loss: Any) -> Any:
    if not isinstance(loss, numpyro.infer.elbo.ELBO):
        raise InvalidTypeError(
            "loss must be a NumPyro ELBO instance (numpyro.infer.Trace_ELBO(), "
            "TraceMeanField_ELBO(), TraceGraph_ELBO(), RenyiELBO(), ...); got "
            f"{type(loss).__name__} {loss!r:.60}"
        )
    return loss


def guide_spec(
    guide: Any, parametrisation: Any, rank: Any = None, max_latent_dim: int | None = None
) -> _h.GuideSpec:
    if rank is not None and guide != "AutoLowRankMultivariateNormal":
        raise InvalidInputError(
            "rank= is an option of guide='AutoLowRankMultivariateNormal' only; "
            f"got rank={rank!r} with guide={guide!r}"
        )
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InvalidInputError(f"rank must be a positive integer; got rank={rank!r}")
    if parametrisation is not None and not isinstance(parametrisation, Parametrisation):
        raise InvalidTypeError(
            "parametrisation must be None or an elbo_check.testing.Parametrisation "
            f"(FullCholesky(), DiagonalLogScale(), ...); got {type(parametrisation).__name__}"
        )
    if isinstance(guide, str):
        if guide not in _h.AUTOGUIDE_NAMES:
            raise InvalidInputError(
                f"guide must be one of {', '.join(_h.AUTOGUIDE_NAMES)} or a guide function; "
                f"got guide={guide!r}"
            )
        if parametrisation is not None:
            raise InvalidInputError(
                f"guide={guide!r} comes with its own parametrisation "
                f"({_h.autoguide_spec(guide).parametrisation!r}); leave parametrisation=None"
            )
        return _h.autoguide_spec(
            guide, rank, _h.DEFAULT_MAX_LATENT_DIM if max_latent_dim is None else max_latent_dim
        )
    if not callable(guide):
        raise InvalidTypeError(
            f"guide must be an autoguide's name ({', '.join(_h.AUTOGUIDE_NAMES)}) or a guide "
            f"function guide(x); got {type(guide).__name__} {guide!r:.60}"
        )
    if parametrisation is None:
        raise InvalidInputError(
            "a guide function needs parametrisation=: an elbo_check.testing."
            "Parametrisation whose keys are the guide's numpyro.param names (e.g. "
            "FullCholesky() for params 'loc' and 'scale_tril')"
        )
    return _h.user_spec(guide, parametrisation)


def check_dtype(dtype: Any) -> bool:
    """True for float64, False for float32; an error for anything else."""
    try:
        chosen = np.dtype(dtype)
    except TypeError:
        chosen = None
    if chosen not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidTypeError(f"dtype must be 'float64' or 'float32'; got dtype={dtype!r}")
    return bool(chosen == np.dtype(np.float64))


@contextlib.contextmanager
def precision(x64: bool) -> Iterator[None]:
    """JAX's thread-local 64-bit switch, set for the verifier's run and restored."""
    with jax.enable_x64(x64):
        yield


def restricted_kinds(spec: _h.GuideSpec, q_kinds: Sequence[str] | None) -> tuple[str, ...]:
    """``q_kinds`` within the kinds the guide represents (all of them by default)."""
    kinds = spec.estimator_kinds or tuple(spec.parametrisation.cov_kinds)
    if q_kinds is None:
        return kinds
    outside = [kind for kind in q_kinds if kind not in kinds]
    if outside:
        raise InvalidInputError(
            f"q_kinds must be kinds guide {spec.name!r} represents, {kinds}; got "
            f"{outside} in q_kinds={tuple(q_kinds)!r}"
        )
    return tuple(q_kinds)


def counted(run: Callable[[], VerificationReport]) -> VerificationReport:
    before = _h.TRACES.count
    report = run()
    details = {**report.details, "compilations": _h.TRACES.count - before}
    return dataclasses.replace(report, details=details)
