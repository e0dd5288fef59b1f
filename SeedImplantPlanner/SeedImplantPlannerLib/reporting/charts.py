"""Pictures for evaluation and reports (matplotlib, Agg backend, no display needed).

- :func:`dvh_figure` -- cumulative DVHs (one or several plans overlaid, solid / dashed / dotted);
- :func:`slice_figure` -- axial, coronal and sagittal planes through a point: dose colour wash,
  isodose lines (50/100/150/200% of the prescription) and structure outlines, on the CT when
  given. Planes are RAS-aligned whatever the grid orientation (dose, CT and structures are
  sampled at the plane's pixels), shown in radiological convention (patient right on the left
  of axial and coronal pictures) with orientation letters on the edges;
- :func:`time_curve_figure` -- dose and BED accumulated against time;
- :func:`gamma_figure` -- gamma histogram of a comparison.
"""

from __future__ import annotations

import io

import numpy as np

ISODOSE_PERCENT = (50, 100, 150, 200)
ISODOSE_COLORS = {50: "#00bfff", 100: "#00ff00", 150: "#ffff00", 200: "#ff00ff"}
LINESTYLES = ("-", "--", ":", "-.")


#: Fallback palette for structures whose colours collide (tab10 without its greys).
PALETTE = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#2ca02c")


def distinct_colors(names, colors=None) -> dict:
    """``{name: colour}`` keeping each structure's own colour unless an earlier one uses a similar colour."""
    from matplotlib.colors import to_hex, to_rgb
    out, used = {}, []

    def free(h):
        return all(np.linalg.norm(np.subtract(to_rgb(h), u)) > 0.3 for u in used)
    spare = [c for c in PALETTE]
    for n in names:
        c = (colors or {}).get(n)
        h = to_hex(c) if c is not None else None
        if h is None or not free(h):
            h = next((p for p in spare if free(p)), spare[len(out) % len(spare)])
        used.append(to_rgb(h))
        out[n] = h
    return out


def _readable_on_white(color):
    """The colour darkened (same hue) when it is too pale to read on a white chart."""
    from matplotlib.colors import to_hex, to_rgb
    rgb = np.asarray(to_rgb(color))
    lum = float(rgb @ [0.299, 0.587, 0.114])
    return to_hex(rgb * (0.55 / lum)) if lum > 0.7 else to_hex(rgb)


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def figure_png_bytes(fig, dpi=110) -> bytes:
    """PNG bytes of a figure (the figure is closed)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path, dpi=110):
    """Write a figure as PNG, atomically."""
    from ..core.fileio import write_bytes
    write_bytes(path, figure_png_bytes(fig, dpi))
    return path


def dvh_figure(dvh_sets, colors=None, prescription_Gy=None, title="Cumulative DVH", max_dose_Gy=None,
               prescriptions=None):
    """Cumulative DVH chart; ``dvh_sets`` is a list of (label, [DVH]) drawn with different line styles.

    ``prescriptions``: several targets' prescriptions as [(target name, Gy)], each marked by a
    vertical line in its target's colour and labelled (instead of the single ``prescription_Gy``).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.0), layout="constrained")
    names = list(dict.fromkeys(d.name for _, dvhs in dvh_sets for d in dvhs))
    colors = {n: _readable_on_white(c) for n, c in distinct_colors(names, colors).items()}
    top = 0.0
    for n, (label, dvhs) in enumerate(dvh_sets):
        for d in dvhs:
            pct = d.cumulative_percent
            nz = np.flatnonzero(pct > 0)
            last = int(nz[-1]) + 2 if nz.size else 2
            x = d.edges_Gy[:last]
            top = max(top, float(x[-1]))
            name = d.name if len(dvh_sets) == 1 else f"{d.name} ({label})"
            ax.plot(x, pct[:last], LINESTYLES[n % len(LINESTYLES)], color=colors.get(d.name), lw=1.6, label=name)
    if prescriptions:
        marks = sorted(((float(rx), name) for name, rx in prescriptions), key=lambda t: t[0])
        for k, (rx, name) in enumerate(marks):
            c = colors.get(name, "0.3")
            ax.axvline(rx, color=c, lw=1.0, ls=":")
            ax.text(rx, 101 - 6 * k, f" Rx {name} {rx:g} Gy", fontsize=8, va="bottom", color=c)
        top = min(top, 4.0 * marks[-1][0]) if max_dose_Gy is None else top
    elif prescription_Gy:
        ax.axvline(prescription_Gy, color="0.3", lw=0.8, ls=":")
        ax.text(prescription_Gy, 101, f" Rx {prescription_Gy:g} Gy", fontsize=8, va="bottom", color="0.3")
        top = min(top, 4.0 * prescription_Gy) if max_dose_Gy is None else top
    if max_dose_Gy is not None:
        top = max_dose_Gy
    ax.set_xlim(0, max(top, 1e-6))
    ax.set_ylim(0, 105)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2 if sum(len(d) for _, d in dvh_sets) > 8 else 1)
    return fig


def _plane_points(center, axis_u, axis_v, half_u, half_v, pixel_mm):
    nu = max(2, int(round(2 * half_u / pixel_mm)) + 1)
    nv = max(2, int(round(2 * half_v / pixel_mm)) + 1)
    u = np.linspace(-half_u, half_u, nu)
    v = np.linspace(-half_v, half_v, nv)
    V, U = np.meshgrid(v, u, indexing="ij")
    pts = center + U[..., None] * axis_u + V[..., None] * axis_v
    return pts, u, v


def _sample(array, geometry, pts, order=1, cval=0.0):
    from scipy import ndimage
    ijk = geometry.ras_to_ijk(pts.reshape(-1, 3))
    out = ndimage.map_coordinates(np.asarray(array, dtype=np.float64), [ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                                  order=order, mode="constant", cval=cval)
    return out.reshape(pts.shape[:-1])


def _sample_mask(structure, pts):
    from ..evaluation.structures import lookup_mask
    ijk = np.rint(structure.geometry.ras_to_ijk(pts.reshape(-1, 3))).astype(np.int64)
    return lookup_mask(structure, ijk).reshape(pts.shape[:-1])


#: (title, horizontal RAS axis, vertical RAS axis, edge letters left/right/top/bottom)
PLANES = (
    ("Axial", np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), ("R", "L", "A", "P")),
    ("Coronal", np.array([-1.0, 0, 0]), np.array([0, 0, 1.0]), ("R", "L", "S", "I")),
    ("Sagittal", np.array([0, -1.0, 0]), np.array([0, 0, 1.0]), ("A", "P", "S", "I")),
)


def slice_figure(dose_Gy, geometry, prescription_Gy, structures=(), center_ras=None, ct=None, pixel_mm=None,
                 title=None, wash_range_percent=(30, 300), context_mm=15.0, colors=None, focus_box_ras=None,
                 reference=None):
    """Axial / coronal / sagittal pictures through ``center_ras`` (default: dose grid centre).

    ``structures``: :class:`structures.Structure` list (outlines in their colours); ``ct``: optional
    (array, geometry) drawn in grey underneath, with ``context_mm`` of anatomy around the dose grid.
    ``focus_box_ras``: optional (lo, hi) RAS box to show instead of the whole grid (see :func:`focus_box`).
    ``reference``: the name of the target whose prescription the % isodoses and the colour wash
    refer to (plans with several prescriptions); it is written in the legend and on the colour bar.
    """
    plt = _plt()
    from matplotlib import patheffects
    from matplotlib.colors import Normalize
    lo, hi = geometry.bounds_ras()
    if focus_box_ras is not None:
        lo = np.maximum(np.asarray(focus_box_ras[0], float), lo - context_mm)
        hi = np.minimum(np.asarray(focus_box_ras[1], float), hi + context_mm)
    center = np.asarray(center_ras if center_ras is not None else (lo + hi) / 2.0, dtype=float)
    if ct is not None:
        # show some anatomy around the dose grid (the dose wash stops at the grid's edge)
        clo, chi = ct[1].bounds_ras()
        lo, hi = np.maximum(lo - context_mm, clo), np.minimum(hi + context_mm, chi)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    half = (hi - lo) / 2.0 + np.asarray(geometry.spacing).max() / 2.0
    box_c = (lo + hi) / 2.0
    if pixel_mm is None:
        pixel_mm = max(0.4, min(1.0, float(np.max(hi - lo)) / 250.0))
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.0), layout="constrained")
    norm = Normalize(wash_range_percent[0], wash_range_percent[1])
    scol = colors or distinct_colors([s.name for s in structures], {s.name: s.color for s in structures})
    img = None
    for ax, (name, au, av, letters) in zip(axes, PLANES):
        iu, iv = int(np.argmax(np.abs(au))), int(np.argmax(np.abs(av)))
        c = center.copy()
        c[iu], c[iv] = box_c[iu], box_c[iv]
        pts, u, v = _plane_points(c, au, av, half[iu], half[iv], pixel_mm)
        ext = (u[0], u[-1], v[0], v[-1])
        if ct is not None:
            cta = _sample(ct[0], ct[1], pts, order=1, cval=-1000.0)
            ax.imshow(cta, cmap="gray", vmin=-160, vmax=240, origin="lower", extent=ext, interpolation="bilinear")
        else:
            ax.imshow(np.zeros((len(v), len(u))), cmap="gray", vmin=0, vmax=1, origin="lower", extent=ext)
        d = _sample(dose_Gy, geometry, pts, order=1, cval=0.0)
        pct = 100.0 * d / prescription_Gy
        wash = np.ma.masked_less(pct, wash_range_percent[0])
        img = ax.imshow(wash, cmap="jet", norm=norm, alpha=0.4 if ct is not None else 0.6, origin="lower", extent=ext,
                        interpolation="bilinear")
        for p in ISODOSE_PERCENT:
            if np.nanmax(pct) >= p:
                ax.contour(u, v, pct, levels=[p], colors=[ISODOSE_COLORS[p]], linewidths=1.2, linestyles="--")
        for s in structures:
            m = _sample_mask(s, pts)
            if m.any() and not m.all():
                ax.contour(u, v, m.astype(float), levels=[0.5], colors=[scol[s.name]], linewidths=1.8)
        ax.set_title(f"{name} through ({center[0]:.1f}, {center[1]:.1f}, {center[2]:.1f}) mm RAS", fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        halo = [patheffects.withStroke(linewidth=2.5, foreground="black")]
        kw = dict(transform=ax.transAxes, color="w", fontsize=10, fontweight="bold", path_effects=halo)
        ax.text(0.02, 0.5, letters[0], ha="left", va="center", **kw)
        ax.text(0.98, 0.5, letters[1], ha="right", va="center", **kw)
        ax.text(0.5, 0.98, letters[2], ha="center", va="top", **kw)
        ax.text(0.5, 0.02, letters[3], ha="center", va="bottom", **kw)
        # scale bar 10 mm
        x0 = u[0] + 0.06 * (u[-1] - u[0])
        y0 = v[0] + 0.06 * (v[-1] - v[0])
        ax.plot([x0, x0 + 10], [y0, y0], color="w", lw=2, path_effects=[patheffects.withStroke(linewidth=4, foreground="black")])
        ax.text(x0 + 5, y0 + 0.02 * (v[-1] - v[0]), "10 mm", color="w", fontsize=7, ha="center", va="bottom",
                path_effects=halo)
    from matplotlib.lines import Line2D
    of = f" of {reference} Rx" if reference else ""
    handles = [Line2D([0], [0], color=ISODOSE_COLORS[p], lw=1.5, ls="--",
                      label=f"{p}%{of} ({p * prescription_Gy / 100:g} Gy)") for p in ISODOSE_PERCENT]
    handles += [Line2D([0], [0], color=scol[s.name], lw=1.8, label=s.name) for s in structures]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), fontsize=8, frameon=False)
    if img is not None:
        cb = fig.colorbar(img, ax=axes, shrink=0.8, pad=0.01)
        cb.set_label(f"Dose (% of {reference} Rx {prescription_Gy:g} Gy)" if reference else "Dose (% of prescription)")
    if title:
        fig.suptitle(title)
    return fig


def focus_box(dose_Gy, geometry, prescription_Gy, structures=(), level_percent=50.0, margin_mm=25.0,
              min_size_mm=80.0):
    """RAS box around the dose >= ``level_percent`` of Rx and ``structures`` (e.g. the target), plus a margin.

    Used to zoom the pictures on the implant when the dose grid covers a whole CT.
    """
    d = np.asarray(dose_Gy)
    pts = []
    sel = d >= level_percent / 100.0 * prescription_Gy
    if sel.any():
        k, j, i = np.nonzero(sel)
        corners = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]], float)
        pts.append(geometry.ijk_to_ras(np.array([[a, b, c] for a in corners[:, 0] for b in corners[:, 1]
                                                 for c in corners[:, 2]])))
    for st in structures:
        bb = st.bbox_ijk()
        if bb is None:
            continue
        lo_i, hi_i = bb
        pts.append(st.geometry.ijk_to_ras(np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                                                    for c in (lo_i[2], hi_i[2])], float)))
    if not pts:
        return None
    p = np.concatenate(pts)
    lo, hi = p.min(axis=0) - margin_mm, p.max(axis=0) + margin_mm
    grow = np.maximum(min_size_mm - (hi - lo), 0.0) / 2.0
    return lo - grow, hi + grow


def time_curve_figure(curves, title="Dose and BED accumulated against time"):
    """Dose (and BED) against time; ``curves`` is ``{label: radiobiology.time_curve(...) dict}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.0), layout="constrained")
    for n, (label, c) in enumerate(curves.items()):
        line = ax.plot(c["t_days"], c["dose_Gy"], LINESTYLES[0], lw=1.6, label=f"{label}: dose")[0]
        if "bed_Gy" in c:
            ax.plot(c["t_days"], c["bed_Gy"], LINESTYLES[1], color=line.get_color(), lw=1.4, label=f"{label}: BED")
        if "bed_repop_Gy" in c:
            ax.plot(c["t_days"], c["bed_repop_Gy"], LINESTYLES[2], color=line.get_color(), lw=1.2,
                    label=f"{label}: BED with repopulation")
    ax.set_xlabel("Days after implant")
    ax.set_ylabel("Gy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def gamma_figure(gamma_result, title=None):
    """Histogram of gamma values with the pass line at 1."""
    plt = _plt()
    g = gamma_result.gamma[np.isfinite(gamma_result.gamma)]
    fig, ax = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    ax.hist(g, bins=np.linspace(0, gamma_result.max_gamma, 41), color="#4477aa")
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel("gamma")
    ax.set_ylabel("voxels")
    ax.set_title(title or f"Gamma {gamma_result.dose_percent:g}%/{gamma_result.dta_mm:g} mm: "
                          f"{gamma_result.pass_rate_percent:.1f}% pass ({gamma_result.n_evaluated} voxels)")
    return fig
