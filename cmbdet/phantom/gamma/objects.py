"""Analytic rendering of small objects (vein segments, microbleeds,
calcifications, cavernomas) on the fine through-slice grid of a scan.

Two fine volumes of shape ``(nx, ny, nz * m)`` are filled by max-composition:
``dark`` (0 = no signal loss, 1 = black; negative = brighter than tissue) and,
for SWI, ``phase`` (positive paramagnetic phase in radians that the SWI phase
mask darkens). Orientation to B0 (world +z) sets vein blooming and phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.special import erfc

from cmbdet.phantom.gamma.acquisition import SliceGrid


@dataclass
class Blob:
    """A focal object: centre (world mm), semi-axes (mm) along ``axes`` columns (world)."""

    kind: str  # "cmb" | "calcification" | "cavernoma"
    centre: np.ndarray
    semi_mm: np.ndarray
    axes: np.ndarray
    dark: float
    profile: str = "sharp"  # "sharp" | "bloom"
    halo: float = 0.0
    phase_rad: float = 0.0
    lobes: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (offset world mm, scale)


@dataclass
class VeinLook:
    """Subject-level vein appearance: base darkness, blooming gain, SWI phase scale."""

    dark_small: float
    dark_sinus: float
    bloom_gain: float
    phase_rad: float


class FineCanvas:
    """The fine through-slice canvas of one scan."""

    def __init__(self, grid: SliceGrid, with_phase: bool):
        self.grid = grid
        m = len(grid.sub_mm)
        self.m = m
        shape = (grid.shape[0], grid.shape[1], grid.shape[2] * m)
        self.dark = np.zeros(shape, np.float32)
        self.phase = np.zeros(shape, np.float32) if with_phase else None
        self.zf = grid.fine_z_mm
        self.sigma_pix = float(max(grid.voxel_mm[0], grid.voxel_mm[1]) / 3.0)

    def _box(self, lo: np.ndarray, hi: np.ndarray):
        g = self.grid
        i0, j0 = (max(0, int(np.floor(lo[a] / g.voxel_mm[a]))) for a in range(2))
        i1, j1 = (min(g.shape[a], int(np.ceil(hi[a] / g.voxel_mm[a])) + 1) for a in range(2))
        k0 = int(np.searchsorted(self.zf, lo[2]))
        k1 = int(np.searchsorted(self.zf, hi[2], side="right"))
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        x = (np.arange(i0, i1) * g.voxel_mm[0]).astype(np.float32)
        y = (np.arange(j0, j1) * g.voxel_mm[1]).astype(np.float32)
        z = self.zf[k0:k1].astype(np.float32)
        return (slice(i0, i1), slice(j0, j1), slice(k0, k1)), x, y, z

    def _put(self, sl, dark: np.ndarray, phase: np.ndarray | None):
        np.maximum(self.dark[sl], dark, out=self.dark[sl])
        if self.phase is not None and phase is not None:
            np.maximum(self.phase[sl], phase, out=self.phase[sl])

    # -- veins --------------------------------------------------------------
    def add_vein_segments(
        self,
        p0w: np.ndarray,
        p1w: np.ndarray,
        radius: np.ndarray,
        chunk: np.ndarray,
        look: VeinLook,
        field_t: float,
        te_ms: float,
    ) -> None:
        """Render segments (world mm) grouped by ``chunk`` id (consecutive, same vessel)."""
        g = self.grid
        u_w = p1w - p0w
        length = np.linalg.norm(u_w, axis=1)
        ok = length > 1e-6
        p0w, p1w, radius, chunk, u_w, length = p0w[ok], p1w[ok], radius[ok], chunk[ok], u_w[ok], length[ok]
        u_w = u_w / length[:, None]
        cos2 = u_w[:, 2] ** 2
        sin2 = 1.0 - cos2
        kb = look.bloom_gain * (field_t / 3.0) * (te_ms / 20.0)
        big = radius >= 1.2
        r_eff = radius * (1.0 + np.where(big, 0.15, 1.0) * kb * (0.6 + sin2))
        d_base = np.where(big, look.dark_sinus, look.dark_small)
        dk = d_base * (0.75 + 0.25 * np.abs(3 * cos2 - 1) / 2)
        phi = np.clip(look.phase_rad * (field_t / 3.0) * (te_ms / 20.0) * (3 * cos2 - 1) / 2, 0, np.pi)
        sp = self.sigma_pix
        amp = np.where(r_eff >= 1.0, dk, dk * r_eff**2 / (r_eff**2 + 2 * sp**2))
        sig2 = r_eff**2 / 2 + sp**2
        edge = np.sqrt(2.0) * (sp + 0.15 * r_eff)
        p0 = g.to_acq_mm(p0w).astype(np.float32)
        u = (u_w @ g.rot).astype(np.float32)
        length, r_eff, dk, phi, amp, sig2, edge = (
            v.astype(np.float32) for v in (length, r_eff, dk, phi, amp, sig2, edge)
        )
        bounds = np.flatnonzero(np.diff(chunk)) + 1
        for idx in np.split(np.arange(len(p0)), bounds):
            if len(idx) == 0:
                continue
            a0, a1 = p0[idx], p0[idx] + u[idx] * length[idx, None]
            ext = float(np.max(np.where(r_eff[idx] >= 1.0, r_eff[idx] + 3 * edge[idx], 3.2 * np.sqrt(sig2[idx]))))
            lo = np.minimum(a0.min(0), a1.min(0)) - ext
            hi = np.maximum(a0.max(0), a1.max(0)) + ext
            box = self._box(lo, hi)
            if box is None:
                continue
            sl, x, y, z = box
            wx = x[:, None, None, None] - a0[:, 0]
            wy = y[None, :, None, None] - a0[:, 1]
            wz = z[None, None, :, None] - a0[:, 2]
            wu = wx * u[idx, 0] + wy * u[idx, 1] + wz * u[idx, 2]
            t = np.clip(wu, 0.0, length[idx])
            d2 = np.maximum(wx * wx + wy * wy + wz * wz - 2 * t * wu + t * t, 0.0)
            thin = amp[idx] * np.exp(-d2 / (2 * sig2[idx]))
            thick = dk[idx] * 0.5 * erfc((np.sqrt(d2) - r_eff[idx]) / edge[idx])
            val = np.where(r_eff[idx] >= 1.0, thick, thin)
            dark = val.max(-1)
            ph = (val * (phi[idx] / np.maximum(dk[idx], 1e-6))).max(-1) if self.phase is not None else None
            self._put(sl, dark, ph)

    # -- focal objects ------------------------------------------------------
    def add_blob(self, b: Blob, rng: np.random.Generator) -> None:
        g = self.grid
        c = g.to_acq_mm(b.centre)[0]
        q = g.rot.T @ b.axes  # columns: blob axes in the acquisition frame
        sp = self.sigma_pix
        semi = np.sqrt(b.semi_mm**2 + sp**2)
        dmax = b.dark * float(np.prod(b.semi_mm / semi)) ** (2.0 / 3.0)
        reach = float(semi.max()) * (3.2 if (b.halo > 0 or b.profile == "bloom") else 2.0) + 1.0
        box = self._box(c - reach, c + reach)
        if box is None:
            return
        sl, x, y, z = box
        parts = [(np.zeros(3), 1.0)] + [(g.rot.T @ off, s) for off, s in b.lobes]
        total = None
        for off, s in parts:
            cc = c + off
            rho2 = None
            for a in range(3):
                r = (
                    (x[:, None, None] - cc[0]) * q[0, a]
                    + (y[None, :, None] - cc[1]) * q[1, a]
                    + (z[None, None, :] - cc[2]) * q[2, a]
                ) / (semi[a] * s)
                rho2 = r * r if rho2 is None else rho2 + r * r
            rho = np.sqrt(rho2)
            if b.kind == "cavernoma":
                v = dmax * np.exp(-(((rho - 1.0) / 0.22) ** 2))
                core = ndi.gaussian_filter(rng.standard_normal(rho.shape).astype(np.float32), 1.2)
                core = core / max(float(np.abs(core).max()), 1e-6)
                v = np.where(rho < 0.85, 0.35 * core - 0.05, v)
            elif b.profile == "bloom":
                v = dmax * np.exp2(-rho2)
            else:
                w = 0.12 + 0.5 * sp / float(semi.mean() * s)
                v = dmax * 0.5 * erfc((rho - 1.0) / (np.sqrt(2.0) * w))
            if b.halo > 0:
                v = np.maximum(v, b.halo * dmax * np.exp2(-((rho / 1.8) ** 2)))
            total = v if total is None else np.maximum(total, v)
        if b.kind == "cavernoma":
            self.dark[sl] = np.where(np.abs(total) > np.abs(self.dark[sl]), total, self.dark[sl])
            ph = None
        else:
            ph = total * (b.phase_rad / max(dmax, 1e-6)) if b.phase_rad > 0 else None
            self.dark[sl] = np.maximum(self.dark[sl], total)
        if self.phase is not None and ph is not None:
            np.maximum(self.phase[sl], ph, out=self.phase[sl])

    # -- slice integration -------------------------------------------------
    def integrate(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Average the fine samples of each slice with the slice-profile weights."""
        m = self.m
        w = self.grid.sub_w.astype(np.float32)

        def red(a: np.ndarray) -> np.ndarray:
            out = np.zeros(self.grid.shape, np.float32)
            for s in range(m):
                out += w[s] * a[:, :, s::m]
            return out

        return red(self.dark), (red(self.phase) if self.phase is not None else None)
