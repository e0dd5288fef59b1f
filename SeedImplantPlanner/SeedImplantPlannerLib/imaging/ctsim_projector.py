"""CT simulator, projection and reconstruction: separable-footprint projector, metal rays, FBP, fast path.

Part of :mod:`imaging.ctsim`. :class:`ParallelProjector` builds the sparse parallel-beam system
matrix of a slice (separable footprints; Long, Fessler and Balter, IEEE Trans Med Imaging 29:1839,
2010) and the ramp filter of the reconstruction kernel (Kak & Slaney 1988, eq. 3.61-3.65);
:func:`_metal_rays` gives the exact metal path lengths of the rays that hit a solid (sub-rays and
sub-planes for the edge-gradient effect); :func:`system_psf` and :func:`_fast_slices` are the
optional fast path for slices without metal (anatomy through the reconstruction's PSF plus
FBP-shaped noise at the physics' level). Lengths in mm, attenuation in 1/mm.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from .ctsim_metal import chord_length
from .ctsim_physics import ENERGY_WEIGHTS, MATERIALS, MIN_COUNTS, MU_E, MU_WATER_REF, Scanner, hu_to_basis

# --- projector ------------------------------------------------------------------------------------

class ParallelProjector:
    """Pixel-driven parallel-beam projector of one slice plane, applied to stacks of slices.

    Pixel (i, j) sits at ``((i - ci) dx, (j - cj) dy)`` mm from the rotation centre (the slice
    centre); view ``v`` is at ``theta = pi v / n_views``; bin ``b`` at ``t = (b - cb) ds``. The
    matrix of a block of views holds the linear-interpolation weights of every pixel on the
    detector; ``forward`` multiplies by pixel area / ds (line integrals in mm x value),
    ``back`` is the plain adjoint (interpolating back-projection).
    """

    def __init__(self, ni, nj, dx, dy, n_views=None, scanner: Scanner | None = None):
        self.ni, self.nj, self.dx, self.dy = int(ni), int(nj), float(dx), float(dy)
        scanner = scanner or Scanner()
        self.oversampling = max(1, int(scanner.detector_oversampling))
        self.aperture_mm = min(self.dx, self.dy)
        self.ds = self.aperture_mm / self.oversampling
        half_diag = 0.5 * math.hypot(ni * dx, nj * dy)
        self.n_det = 2 * int(math.ceil(half_diag / self.ds)) + 5
        self.n_views = int(n_views) if n_views else scanner.views_for(self.n_det // self.oversampling)
        self.theta = np.arange(self.n_views) * np.pi / self.n_views
        self.block = max(1, int(scanner.view_block))
        x = ((np.arange(ni) - (ni - 1) / 2.0) * dx).astype(np.float32)
        y = ((np.arange(nj) - (nj - 1) / 2.0) * dy).astype(np.float32)
        self.X = np.broadcast_to(x[None, :], (nj, ni)).ravel()
        self.Y = np.broadcast_to(y[:, None], (nj, ni)).ravel()
        self.t_bins = (np.arange(self.n_det) - (self.n_det - 1) / 2.0) * self.ds

    def blocks(self):
        """Yield ``(view indices, sparse matrix (n_views_blk * n_det, n_pix))`` for each block of views.

        Entry (ray, pixel) = fraction of the pixel's footprint on the detector that falls into the
        bin (separable-footprint model: the projection of a square pixel is a trapezoid; Long, Fessler
        and Balter, IEEE Trans Med Imaging 29:1839, 2010), so every pixel's weights sum to 1 per view.
        """
        import scipy.sparse as sps
        n_pix = self.X.size
        c0 = (self.n_det - 1) / 2.0
        K = int(math.ceil((self.dx + self.dy) / self.ds)) + 1          # bins a footprint can touch
        n_tab = 512                                                     # sub-bin positions tabulated
        frac = (np.arange(n_tab) + 0.5) / n_tab * self.ds               # tau0 - lower edge of its bin
        x_rel = (np.arange(K + 1) * self.ds)[None, :] - frac[:, None]   # bin edges relative to tau0

        def relu2(z):
            z = np.maximum(z, 0.0)
            return z * z
        for start in range(0, self.n_views, self.block):
            views = np.arange(start, min(start + self.block, self.n_views))
            nv = len(views)
            th = self.theta[views]
            c, s = np.cos(th), np.sin(th)
            a = np.abs(c) * self.dx
            b = np.abs(s) * self.dy
            r = np.maximum(np.minimum(a, b), 1e-3 * self.ds)              # ramp width
            half_out = (a + b) / 2.0
            h = 1.0 / (2.0 * half_out - r)                                 # unit area
            w_out = 2.0 * half_out
            # footprint CDF at the edges, per view and tabulated sub-bin offset: (nv, n_tab, K+1)
            z = x_rel[None, :, :]
            F = (relu2(z) - relu2(z - r[:, None, None]) - relu2(z - (w_out - r)[:, None, None])
                 + relu2(z - w_out[:, None, None])) * (h / (2.0 * r))[:, None, None]
            table = np.diff(np.clip(F, 0.0, 1.0), axis=-1).astype(np.float32)     # (nv, n_tab, K)
            t = self.X[:, None] * c.astype(np.float32)[None, :] + self.Y[:, None] * s.astype(np.float32)[None, :]
            pos = (t - half_out.astype(np.float32)[None, :]) / np.float32(self.ds) + np.float32(c0 + 0.5)
            m0 = np.floor(pos)
            fi = np.minimum(((pos - m0) * n_tab).astype(np.int32), n_tab - 1)
            m0 = m0.astype(np.int32)
            w = table[np.arange(nv)[None, :], fi]                          # (n_pix, nv, K)
            rows = m0[..., None] + np.arange(K, dtype=np.int32)
            np.clip(rows, 0, self.n_det - 1, out=rows)
            rows += (np.arange(nv, dtype=np.int32) * self.n_det)[None, :, None]
            indptr = np.arange(0, n_pix * nv * K + 1, nv * K, dtype=np.int64)
            yield views, sps.csc_matrix((w.reshape(-1), rows.reshape(-1), indptr), shape=(nv * self.n_det, n_pix))

    def aperture(self, T, axis=-2):
        """Detector aperture of one pixel width: mean of the transmission over it (along ``axis``)."""
        m = self.oversampling
        if m == 1:
            return T
        # trapezoid of width m samples: weights 1/2, 1, ..., 1, 1/2 over m + 1 samples
        w = np.ones(m + 1, np.float32)
        w[0] = w[-1] = 0.5
        w /= w.sum()
        from scipy import ndimage
        return ndimage.convolve1d(T, w, axis=axis, mode="nearest")

    def forward_scale(self):
        """Factor turning matrix x pixel values into line integrals (mm)."""
        return self.dx * self.dy / self.ds

    def ramp_filter(self, p, axis=-1, kernel="hann"):
        """Filtered projections along ``axis`` (detector bins): ramp filter of the chosen kernel.

        ``ram-lak``: band-limited ramp from its spatial kernel (Kak & Slaney eq. 3.61, so the DC
        gain is right); ``shepp-logan``: the Shepp-Logan spatial kernel; ``hann`` (default, a
        "standard" soft-tissue kernel): the Ram-Lak response times a Hann window reaching zero at
        the detector's Nyquist frequency.
        """
        n = p.shape[axis]
        size = 1 << int(math.ceil(math.log2(2 * n)))
        k = np.arange(size)
        k = np.where(k > size // 2, k - size, k).astype(float)
        if kernel == "shepp-logan":
            h = -2.0 / (np.pi ** 2 * self.ds ** 2 * (4.0 * k ** 2 - 1.0))
        elif kernel in ("ram-lak", "hann"):
            h = np.zeros(size)
            h[k == 0] = 1.0 / (4.0 * self.ds ** 2)
            odd = (np.abs(k) % 2) == 1
            h[odd] = -1.0 / (np.pi ** 2 * k[odd] ** 2 * self.ds ** 2)
        else:
            raise InputError(f"reconstruction kernel must be 'hann', 'shepp-logan' or 'ram-lak', got {kernel!r}")
        H = np.fft.rfft(h).real * self.ds
        if kernel == "hann":
            f = np.arange(H.size) / (size / 2.0)                     # 0 .. 1 (Nyquist)
            H = H * 0.5 * (1.0 + np.cos(np.pi * f))
        P = np.fft.rfft(p, n=size, axis=axis)
        shape = [1] * p.ndim
        shape[axis] = H.size
        q = np.fft.irfft(P * H.reshape(shape), n=size, axis=axis)
        return np.take(q, np.arange(n), axis=axis).astype(np.float32)

    def ray_geometry(self, views, bins):
        """Ray start points (u, v offsets from the centre) and unit directions for (view, bin) pairs."""
        th = self.theta[views]
        t = self.t_bins[bins]
        c, s = np.cos(th), np.sin(th)
        return t * c, t * s, -s, c


def _metal_rays(proj, solids, w_center, row, sub_mm, cu, cv, sub_rays=4):
    """Metal path lengths of every ray hitting a solid in one thin slice.

    Each detector bin is sampled by ``sub_rays`` parallel rays across its aperture (one pixel
    wide) times the sub-planes across the row; the transmission is later averaged over these
    samples (the exponential edge-gradient effect in-plane and through the slice).
    Returns ``(ray ids (n,), lengths (n, n_samples, n_mat))`` with ray id = view * n_det + bin.
    """
    n_plane = max(1, int(math.ceil(row / sub_mm - 1e-9)))
    n_ray = max(1, int(sub_rays))
    w_plane = w_center + (np.arange(n_plane) - (n_plane - 1) / 2.0) * (row / n_plane)
    t_off = (np.arange(n_ray) - (n_ray - 1) / 2.0) * (proj.ds / n_ray)
    w_sub = np.repeat(w_plane, n_ray)
    t_sub = np.tile(t_off, n_plane)
    n_sub = n_plane * n_ray
    lo_w, hi_w = w_center - row / 2.0, w_center + row / 2.0
    ids_all, len_all = [], []
    c, s = np.cos(proj.theta), np.sin(proj.theta)
    c0 = (proj.n_det - 1) / 2.0
    for solid in solids:
        if solid.w_range[1] < lo_w or solid.w_range[0] > hi_w:
            continue
        for group in solid.groups:          # disjoint convex groups: chords add, rays chosen per group
            seg_pts, rad = [], 0.0
            for p in group:
                if p[0] == "sph":
                    if p[1][2] + p[2] < lo_w or p[1][2] - p[2] > hi_w:
                        continue
                    seg_pts.append(p[1][None, :])
                    rad = max(rad, p[2])
                    continue
                a, b = p[5]
                r = p[3]
                dw = b[2] - a[2]
                if abs(dw) > 1e-9:
                    s_lo = (lo_w - r - a[2]) / dw
                    s_hi = (hi_w + r - a[2]) / dw
                    s_lo, s_hi = max(min(s_lo, s_hi), 0.0), min(max(s_lo, s_hi), 1.0)
                    if s_hi < s_lo:
                        continue
                elif a[2] + r < lo_w or a[2] - r > hi_w:
                    continue
                else:
                    s_lo, s_hi = 0.0, 1.0
                seg_pts.append(a[None, :] + np.array([[s_lo], [s_hi]]) * (b - a)[None, :])
                rad = max(rad, r)
            if not seg_pts:
                continue
            sp = np.vstack(seg_pts)
            t = (sp[:, 0:1] - cu) * c[None, :] + (sp[:, 1:2] - cv) * s[None, :]
            b_lo = np.clip(np.floor((t.min(axis=0) - rad - proj.ds) / proj.ds + c0).astype(int), 0, proj.n_det - 1)
            b_hi = np.clip(np.ceil((t.max(axis=0) + rad + proj.ds) / proj.ds + c0).astype(int), 0, proj.n_det - 1)
            counts = b_hi - b_lo + 1
            views = np.repeat(np.arange(proj.n_views), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            bins = np.repeat(b_lo, counts) + (np.arange(views.size) - first)
            tu, tv, du, dv = proj.ray_geometry(views, bins)
            p0 = np.empty((views.size, n_sub, 3))
            p0[..., 0] = (cu + tu)[:, None] + t_sub[None, :] * dv[:, None]     # (dv, -du): the ray's normal
            p0[..., 1] = (cv + tv)[:, None] - t_sub[None, :] * du[:, None]
            p0[..., 2] = w_sub[None, :]
            d = np.zeros((views.size, 1, 3))
            d[:, 0, 0] = du
            d[:, 0, 1] = dv
            L = chord_length([group], p0, d)                 # (n_rays, n_sub)
            hit = np.any(L > 0, axis=1)
            if not hit.any():
                continue
            ids_all.append(views[hit] * proj.n_det + bins[hit])
            len_all.append(L[hit][:, :, None] * solid.weights[None, None, :])
    if not ids_all:
        return np.zeros(0, np.int64), np.zeros((0, n_sub, len(MATERIALS)))
    ids = np.concatenate(ids_all)
    lens = np.concatenate(len_all)
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((uniq.size, n_sub, len(MATERIALS)))
    np.add.at(out, inv, lens)
    return uniq, out


def system_psf(proj: ParallelProjector, scanner: Scanner, n=33):
    """The reconstruction's own point-spread function (n x n, sums to 1): a pixel impulse through projector and FBP."""
    small = ParallelProjector(n, n, proj.dx, proj.dy, n_views=proj.n_views, scanner=scanner)
    img = np.zeros(n * n, np.float32)
    img[(n // 2) * n + n // 2] = 1.0
    out = np.zeros(n * n, np.float32)
    for views, A in small.blocks():
        p = (A @ img) * np.float32(small.forward_scale())
        q = small.ramp_filter(p.reshape(len(views), small.n_det), axis=1, kernel=scanner.kernel).ravel()
        out += A.T @ q
    psf = (out * np.pi / small.n_views).reshape(n, n)
    return psf / psf.sum()


def _fast_slices(hu_planes, proj, scanner, I0, photons_noisy, rngs, p_table, L_table, psf):
    """Metal-free thin slices without projection: anatomy * system PSF + stationary FBP-shaped noise.

    The noise has the FBP noise power spectrum of the kernel (|H(f)|^2 / |f|, parallel beam) and the
    standard deviation the physics gives at the slice centre: var(mu) = (pi/N)^2 sum_views
    var(q(0)), var(q(0)) = var(p_corr) sum_b q_delta_b^2, var(p) = 1/counts on the central ray of
    each view (counts from the polychromatic transmission), p_corr by the water correction's slope.
    """
    from scipy import ndimage
    from scipy.signal import fftconvolve
    nk, nj, ni = hu_planes.shape
    delta = np.zeros((1, proj.n_det), np.float32)
    delta[0, proj.n_det // 2] = 1.0
    q_delta = proj.ramp_filter(delta, axis=1, kernel=scanner.kernel)[0]
    g2 = float(np.sum(q_delta.astype(float) ** 2))
    # radial noise filter |H(f)| / sqrt(|f|) on the image's 2D frequency grid
    fy = np.fft.fftfreq(nj, d=proj.dy)[:, None]
    fx = np.fft.fftfreq(ni, d=proj.dx)[None, :]
    fr = np.hypot(fx, fy)
    size = 1 << int(math.ceil(math.log2(2 * proj.n_det)))
    imp = np.zeros((1, size // 2), np.float32)
    imp[0, 0] = 1.0
    fh = np.fft.rfftfreq(size, d=proj.ds)
    H = np.abs(np.fft.rfft(proj.ramp_filter(np.pad(imp, ((0, 0), (0, 0))), axis=1, kernel=scanner.kernel)[0], n=size))
    Hr = np.interp(fr, fh[:len(H)], H[:len(fh)], right=0.0)
    amp = np.where(fr > 0, Hr / np.sqrt(np.maximum(fr, 1e-12)), 0.0)
    th = proj.theta
    t = np.arange(-(max(ni, nj)), max(ni, nj) + 1) * min(proj.dx, proj.dy) * 0.75
    out = np.empty_like(hu_planes, dtype=np.float32)
    for k in range(nk):
        hu = hu_planes[k]
        out[k] = fftconvolve(hu, psf, mode="same")
        if not photons_noisy:
            continue
        a, b = hu_to_basis(hu)
        # central ray of each view: samples along the line through the slice centre
        ci, cj = (ni - 1) / 2.0, (nj - 1) / 2.0
        ii = ci + np.outer(-np.sin(th), t) / proj.dx
        jj = cj + np.outer(np.cos(th), t) / proj.dy
        step = t[1] - t[0]
        Lw = ndimage.map_coordinates(a, [jj.ravel(), ii.ravel()], order=1, cval=0.0).reshape(ii.shape).sum(1) * step
        Lb = ndimage.map_coordinates(b, [jj.ravel(), ii.ravel()], order=1, cval=0.0).reshape(ii.shape).sum(1) * step
        T = np.exp(-(np.outer(Lw, MU_E[0]) + np.outer(Lb, MU_E[1]))) @ ENERGY_WEIGHTS
        counts = np.maximum(I0 * T, MIN_COUNTS)
        var_p = (counts + scanner.electronic_noise_counts ** 2) / counts ** 2
        p = -np.log(np.maximum(T, 1e-30))
        dLdp = np.interp(p, p_table[1:], np.diff(L_table) / np.diff(p_table))
        var_mu = (np.pi / proj.n_views) ** 2 * g2 * float(np.sum(var_p * (MU_WATER_REF * dLdp) ** 2))
        sd_hu = 1000.0 * math.sqrt(var_mu) / MU_WATER_REF
        white = rngs[k].normal(size=(nj, ni))
        noise = np.fft.ifft2(np.fft.fft2(white) * amp).real
        out[k] += (noise / max(float(noise.std()), 1e-12) * sd_hu).astype(np.float32)
    return out
