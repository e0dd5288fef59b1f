"""Seed strength: air-kerma strength S_K in U, apparent activity in mCi, decay between dates.

1 U = 1 uGy m^2 h^-1 = 1 cGy cm^2 h^-1. Apparent activity converts to S_K with the factor of the
model's nuclide (I-125: 1.270 U/mCi, see :data:`sources.U_PER_MCI_BY_NUCLIDE`); for a nuclide with
no shipped factor mCi is refused. Decay: S(t) = S(t_ref) exp(-ln2 (t - t_ref) / T1/2).
"""

from __future__ import annotations

import datetime as _dt
import math

from ..core.errors import InputError
from .sources import HOURS_PER_DAY, SeedModel

UNITS = ("U", "mCi")


def parse_datetime(value) -> _dt.datetime:
    """Parse an ISO date or date-time (``2026-11-27`` or ``2026-11-27T08:30``) to a datetime."""
    if isinstance(value, _dt.datetime):
        return value
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day)
    try:
        return _dt.datetime.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise InputError(f"not an ISO date or date-time: {value!r} (expected e.g. 2026-11-27 or 2026-11-27T08:30)") from exc


def check_strength_value(value, what="seed strength"):
    """Return ``value`` as float if it is finite and > 0, else raise InputError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} is not finite: {value!r}")
    if v <= 0:
        raise InputError(f"{what} must be > 0, got {v:g}")
    return v


def to_air_kerma_strength_U(value, unit: str, model: SeedModel) -> float:
    """Convert a strength given in ``unit`` ('U' or 'mCi') to air-kerma strength in U."""
    v = check_strength_value(value)
    if unit == "U":
        return v
    if unit == "mCi":
        if model.u_per_mci is None:
            raise InputError(
                f"strength in mCi is not accepted for {model.nuclide} seeds ({model.model_id}): "
                "no apparent-activity conversion factor is shipped for this nuclide; give S_K in U")
        return v * model.u_per_mci
    raise InputError(f"unknown strength unit {unit!r} (use one of: {', '.join(UNITS)})")


def decay_factor(model: SeedModel, reference, at) -> float:
    """Fraction of the strength at ``reference`` that remains at ``at`` (dates or date-times)."""
    ref, when = parse_datetime(reference), parse_datetime(at)
    hours = (when - ref).total_seconds() / 3600.0
    return math.exp(-model.decay_constant_per_h * hours)


def strength_at(model: SeedModel, value, unit: str, reference_date=None, implant_date=None) -> float:
    """Air-kerma strength in U at the implant date, from a strength quoted at a reference date.

    Without both dates the strength is taken as given at the implant date.
    """
    sk = to_air_kerma_strength_U(value, unit, model)
    if reference_date is None or implant_date is None:
        return sk
    ref, when = parse_datetime(reference_date), parse_datetime(implant_date)
    if when < ref:
        raise InputError(f"implant date {implant_date} is before the strength reference date {reference_date}: "
                         "decaying backwards would raise the strength; check the dates")
    return sk * decay_factor(model, ref, when)


def hours_between(start, stop) -> float:
    """Hours from ``start`` to ``stop`` (dates or date-times)."""
    return (parse_datetime(stop) - parse_datetime(start)).total_seconds() / 3600.0


def days_to_hours(days: float) -> float:
    """Days to hours."""
    return float(days) * HOURS_PER_DAY
