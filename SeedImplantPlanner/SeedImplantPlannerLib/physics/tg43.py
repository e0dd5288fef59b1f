"""AAPM TG-43U1 dose-rate kernel of one seed model (Rivard et al., Med Phys 31:633, 2004).

2D (line source, the default):
    Ddot(r, theta) = S_K * Lambda * [G_L(r, theta) / G_L(r0, theta0)] * g_L(r) * F(r, theta)
1D:
    Ddot(r) = S_K * Lambda * [G_X(r, theta0) / G_X(r0, theta0)] * g_X(r) * phi_an(r)
    with X = L (line-source geometry and g_L, TG-43U1's recommendation for 1D) or X = P
    (G_P = 1/r^2 with g_P, only where g_P is tabulated).
r0 = 1 cm, theta0 = 90 deg, theta measured from the seed's long axis.

Geometry function, computed in the numerically stable form
    beta = atan2(L * rho, r^2 - L^2 / 4),  G_L = beta / (L * rho)     (rho = r sin theta > 0)
    G_L = 1 / (r^2 - L^2 / 4)                                             (on the axis)
which equals TG-43U1 Eq. (4) (beta is the angle the active length subtends at the point).

Rules outside the tables (documented in README, tested in test_tg43.py):
- g(r): linear interpolation in r between tabulated radii (TG-43U1 Sec. IV); r < r_min:
  g(r_min) (nearest neighbour, TG-43U1 Appendix C); r > r_max: log-linear (exponential)
  extrapolation through the last two points. TG-43U1 Eq. (C1) extrapolates linearly, which for
  model 6711 turns negative near 12.8 cm; the exponential form stays positive and agrees with the
  linear one to < 1 % of g at r_max + 1 cm (both continue the last segment's trend).
- F(r, theta): bilinear in (r, theta) inside the table; outside the tabulated radii F takes the
  value at the nearest tabulated radius (TG-43U1 Appendix C), never 1 and never 0. Tables given on
  0-90 deg are mirrored about the transverse plane (F(180 - theta) = F(theta)).
- phi_an(r): linear in r inside the table, nearest neighbour outside.
- Inside the seed: TG-43 defines no dose for r < L/2. Points closer to the seed centre than the
  cap radius r_cap (default L/2 + 0.02 cm, just beyond the ends of the active length and inside the
  smallest tabulated radius of every shipped model) are evaluated at r_cap along the same direction,
  so no NaN or Inf ever reaches an output; callers count those points as "capped".
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from .sources import SeedModel

R0_CM = 1.0
THETA0_DEG = 90.0
#: Margin beyond the active end used for the default cap radius (cm).
CAP_MARGIN_CM = 0.02
FORMALISMS = ("2D", "1D")


def geometry_factor_line(r_cm, cos_theta, length_cm):
    """Line-source geometry function G_L(r, theta) in cm^-2 (TG-43U1 Eq. 4), r > L/2 on the axis."""
    r = np.asarray(r_cm, dtype=float)
    c = np.clip(np.asarray(cos_theta, dtype=float), -1.0, 1.0)
    rho = r * np.sqrt(np.maximum(0.0, 1.0 - c * c))
    denom = r * r - 0.25 * length_cm * length_cm
    lrho = length_cm * rho
    beta = np.arctan2(lrho, denom)
    tiny = lrho < 1e-12 * np.maximum(denom, 1e-30)
    safe = np.where(tiny, 1.0, lrho)
    return np.where(tiny, 1.0 / np.where(tiny, denom, 1.0), beta / safe)


def geometry_factor_line_reference(length_cm):
    """G_L(r0 = 1 cm, theta0 = 90 deg) = 2 atan(L/2) / L, in cm^-2."""
    return 2.0 * math.atan(0.5 * length_cm) / length_cm


def interp_radial(r_cm, table_r, table_g):
    """g(r): linear inside, constant below r_min, log-linear beyond r_max (see module doc)."""
    r = np.asarray(r_cm, dtype=float)
    out = np.interp(r, table_r, table_g)
    beyond = r > table_r[-1]
    if np.any(beyond):
        r1, r2 = table_r[-2], table_r[-1]
        g1, g2 = table_g[-2], table_g[-1]
        mu = math.log(g1 / g2) / (r2 - r1)
        out = np.where(beyond, g2 * np.exp(-mu * (r - r2)), out)
    return out


def interp_anisotropy(r_cm, theta_deg, table_r, table_theta, table_f):
    """F(r, theta) bilinear in (r, theta); nearest tabulated radius outside [r_min, r_max]."""
    r = np.clip(np.asarray(r_cm, dtype=float), table_r[0], table_r[-1])
    t = np.asarray(theta_deg, dtype=float)
    if table_theta[-1] <= 90.0:
        t = np.where(t > 90.0, 180.0 - t, t)
    t = np.clip(t, table_theta[0], table_theta[-1])
    jr = np.clip(np.searchsorted(table_r, r, side="right") - 1, 0, table_r.size - 2)
    it = np.clip(np.searchsorted(table_theta, t, side="right") - 1, 0, table_theta.size - 2)
    wr = (r - table_r[jr]) / (table_r[jr + 1] - table_r[jr])
    wt = (t - table_theta[it]) / (table_theta[it + 1] - table_theta[it])
    f00 = table_f[it, jr]
    f01 = table_f[it, jr + 1]
    f10 = table_f[it + 1, jr]
    f11 = table_f[it + 1, jr + 1]
    return (1 - wt) * ((1 - wr) * f00 + wr * f01) + wt * ((1 - wr) * f10 + wr * f11)


def interp_clamped(x, table_x, table_y):
    """Linear interpolation with nearest-neighbour values outside the table."""
    return np.interp(np.asarray(x, dtype=float), table_x, table_y)


class TG43Kernel:
    """Dose rate per unit air-kerma strength around one seed of ``model`` (cGy/h per U)."""

    def __init__(self, model: SeedModel, formalism: str = "2D", geometry_1d: str = "line",
                 r_cap_cm: float | None = None):
        if formalism not in FORMALISMS:
            raise InputError(f"unknown formalism {formalism!r} (use 2D or 1D)")
        if formalism == "1D" and model.phi_an is None:
            raise InputError(
                f"the 1D formalism is unavailable for {model.model_id}: its anisotropy factor phi_an "
                "is not tabulated in the shipped data; use the 2D formalism")
        if geometry_1d not in ("line", "point"):
            raise InputError(f"unknown 1D geometry {geometry_1d!r} (use line or point)")
        if formalism == "1D" and geometry_1d == "point" and model.g_P is None:
            raise InputError(f"point-source 1D needs g_P, which is not tabulated for {model.model_id}")
        self.model = model
        self.formalism = formalism
        self.geometry_1d = geometry_1d
        half = 0.5 * model.active_length_cm
        self.r_cap_cm = float(half + CAP_MARGIN_CM if r_cap_cm is None else r_cap_cm)
        if not self.r_cap_cm > half:
            raise InputError(f"cap radius {self.r_cap_cm} cm must exceed half the active length {half} cm")
        self.g0 = geometry_factor_line_reference(model.active_length_cm)

    def describe(self) -> str:
        """Short text naming the model and formalism, for reports."""
        if self.formalism == "2D":
            return f"{self.model.model_id}, TG-43U1 2D line source"
        return f"{self.model.model_id}, TG-43U1 1D ({self.geometry_1d}-source geometry)"

    def dose_rate_per_U(self, r_cm, cos_theta):
        """Return (dose rate in cGy/h per U, boolean mask of capped points) at (r, cos theta)."""
        r = np.asarray(r_cm, dtype=float)
        capped = r < self.r_cap_cm
        r_e = np.maximum(r, self.r_cap_cm)
        m = self.model
        L = m.active_length_cm
        if self.formalism == "2D":
            c = np.clip(np.asarray(cos_theta, dtype=float), -1.0, 1.0)
            g_ratio = geometry_factor_line(r_e, c, L) / self.g0
            theta = np.degrees(np.arccos(c))
            rate = m.dose_rate_constant * g_ratio * interp_radial(r_e, m.g_r_cm, m.g_L) * \
                interp_anisotropy(r_e, theta, m.F_r_cm, m.F_theta_deg, m.F)
        elif self.geometry_1d == "line":
            g_ratio = geometry_factor_line(r_e, 0.0, L) / self.g0
            rate = m.dose_rate_constant * g_ratio * interp_radial(r_e, m.g_r_cm, m.g_L) * \
                interp_clamped(r_e, m.phi_r_cm, m.phi_an)
        else:
            rate = m.dose_rate_constant * (R0_CM / r_e) ** 2 * interp_radial(r_e, m.g_r_cm, m.g_P) * \
                interp_clamped(r_e, m.phi_r_cm, m.phi_an)
        return rate, capped

    def dose_rate_at_points(self, points_mm, position_mm, axis, strength_U=1.0):
        """Dose rate (cGy/h) of one seed at ``points_mm`` (M, 3), and the capped-point mask."""
        a = np.asarray(axis, dtype=float).reshape(3)
        norm = float(np.linalg.norm(a))
        if not np.isfinite(norm) or norm < 1e-9:
            raise InputError(f"seed axis has zero length or is not finite: {a.tolist()}")
        d = (np.asarray(points_mm, dtype=float) - np.asarray(position_mm, dtype=float)) * 0.1  # cm
        r = np.sqrt(np.einsum("ij,ij->i", d, d))
        z = d @ (a / norm)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(r > 0, z / np.where(r > 0, r, 1.0), 1.0)
        rate, capped = self.dose_rate_per_U(r, c)
        return strength_U * rate, capped
