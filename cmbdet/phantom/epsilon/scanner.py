"""Scanner model of the "epsilon" family: the simulation grid, the complex GRE signal with its
susceptibility physics, and the acquisition chain down to the stored NIfTI.

Signal (per voxel of a fine grid: the acquired in-plane step, slices cut into sub-slices):

* tissue magnitude from the head model, sampled through the subject's pose;
* susceptibility sources on the fine grid (veins' deoxygenated blood, microbleed haemosiderin,
  calcium) give a field by the k-space dipole kernel (B0 along scanner z, whatever the slab's tilt);
  the smooth field of air, bone and iron comes from the head model;
* each voxel's signal is ``[S_tissue (1 - f) + S_blood f e^{i psi}] e^{i phi} D``: ``f`` the blood
  fraction (partial volume of thin veins), ``psi`` the blood's own phase (depends on the vein's angle
  to B0), ``phi = -gamma B0 TE dB`` and ``D`` the intravoxel dephasing by the field gradient; deposits
  remove signal inside (``void``); arteries are flow voids (or bright inflow);
* a slice is the complex mean of its sub-slices, so phase dispersion through a thick slice darkens
  (blooming, air-bone dropout) and a vein crossing a slice fades into a dot.

Acquisition: receive-coil shading, centred 2-D k-space per slice cropped to the acquired matrix
(truncation ringing), partial Fourier, apodization, motion ghosts along the phase-encode axis,
complex Gaussian noise (Rician magnitude), zero-filled reconstruction on the stored grid, SWI
(homodyne high-pass phase, negative-phase mask to a power) or plain magnitude, intensity scaling,
int16 / uint16 / float32 storage in any axis order and signs (the affine says where each voxel is).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import fft
from scipy import ndimage as ndi
from scipy.special import erfc

from cmbdet.anatomy import MniMaps

from .head import Pose, Tissue, dipole_field, rot
from .protocol import GAMMA, EpsilonProtocol

#: most fine-grid voxels simulated (coarser in-plane steps are used above it)
MAX_FINE_VOXELS = 14_000_000
#: signal loss per radian of (volume fraction x frequency spread x TE) around sub-voxel sources
STATIC_DEPHASING = 0.7


@dataclass(frozen=True)
class Grid:
    """Regular grid in world mm: ``world = origin + axes @ (spacing * ijk)``; ``axes`` columns are
    the unit world directions of the i, j, k axes (k = slice axis)."""

    axes: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    origin: np.ndarray

    def index(self, w: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) continuous voxel indices."""
        return ((np.atleast_2d(w) - self.origin) @ self.axes) / self.spacing

    def world(self, ijk: np.ndarray) -> np.ndarray:
        return self.origin + (np.atleast_2d(ijk) * self.spacing) @ self.axes.T

    def affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = self.axes * self.spacing
        a[:3, 3] = self.origin
        return a

    def inside(self, w: np.ndarray, margin_mm: float = 0.0) -> bool:
        ijk = self.index(w)[0]
        m = margin_mm / self.spacing
        return bool(np.all(ijk >= m - 0.5) and np.all(ijk <= np.asarray(self.shape) - 0.5 - m))


def place_grid(rng: np.random.Generator, proto: EpsilonProtocol, pose: Pose, maps2: MniMaps, tissue: Tissue,
               ) -> tuple[Grid, EpsilonProtocol]:
    """The fine simulation grid: slab orientation (aligned with the head, or scanner-axial with the
    head's pitch), in-plane extent = the head's cross-section, slices over the brain (vertex or base
    cut on some scans). May coarsen the in-plane step to stay under :data:`MAX_FINE_VOXELS`."""
    base = pose.rotation if proto.follow_head else np.eye(3)
    tilt = rot(0, proto.tilt_deg * (0.3 if proto.follow_head else 1.0))
    ax = rng.normal(size=3)
    ax[2] = 0.0
    ax /= max(np.linalg.norm(ax), 1e-9)
    k = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    a = np.deg2rad(proto.oblique_deg)
    obl = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    axes = base @ tilt @ obl
    outer = tissue.rim_mm + 2 * tissue.table_mm + tissue.diploe_mm + tissue.scalp_mm
    res = maps2.resolution
    head_mask = (maps2.d_env < outer) | (maps2.lower_head > 0.5)
    head = np.argwhere(head_mask[::2, ::2, ::2]) * 2 * res + maps2.affine[:3, 3]
    brain = np.argwhere(maps2.brain[::2, ::2, ::2]) * 2 * res + maps2.affine[:3, 3]
    centre = pose.mni_to_world(np.zeros((1, 3)))[0]
    hw = (pose.mni_to_world(head) - centre) @ axes
    bw = (pose.mni_to_world(brain) - centre) @ axes
    lo_k, hi_k = bw[:, 2].min() - 3.0, bw[:, 2].max() + 4.0
    if proto.cover == "vertex_cut":
        hi_k -= rng.uniform(8.0, 25.0)
    elif proto.cover == "base_cut":
        lo_k += rng.uniform(10.0, 25.0)
    in_slab = (hw[:, 2] >= lo_k - 5) & (hw[:, 2] <= hi_k + 5)
    lo = hw[in_slab, :2].min(axis=0) - 5.0
    hi = hw[in_slab, :2].max(axis=0) + 5.0
    sub = proto.sub_slices
    n_slices = max(4, int(np.ceil((hi_k - lo_k) / proto.slice_mm)))
    h = proto.sim_inplane_mm
    nx, ny = (int(np.ceil((hi[i] - lo[i]) / h)) + 1 for i in range(2))
    if nx * ny * n_slices * sub > MAX_FINE_VOXELS:
        h *= float(np.sqrt(nx * ny * n_slices * sub / MAX_FINE_VOXELS))
        nx, ny = (int(np.ceil((hi[i] - lo[i]) / h)) + 1 for i in range(2))
        proto = replace(proto, sim_inplane_mm=h, acq_inplane_mm=max(proto.acq_inplane_mm, h))
    dz = proto.slice_mm / sub
    origin = centre + axes @ np.array([lo[0], lo[1], lo_k + dz / 2.0])
    grid = Grid(axes=axes, spacing=np.array([h, h, dz]), shape=(nx, ny, n_slices * sub), origin=origin)
    return grid, proto


def sample_maps(grid: Grid, pose: Pose, arrays: list[tuple[np.ndarray, MniMaps]]) -> list[np.ndarray]:
    """Trilinear samples of MNI-grid maps at every fine-grid voxel, (I, J, K) float32 each."""
    nx, ny, nz = grid.shape
    outs = [np.empty(grid.shape, np.float32) for _ in arrays]
    ii, jj = np.meshgrid(np.arange(nx, dtype=np.float32), np.arange(ny, dtype=np.float32), indexing="ij")
    plane = np.stack([ii.ravel(), jj.ravel()], axis=1)
    per = max(1, 2_000_000 // (nx * ny))
    for k0 in range(0, nz, per):
        ks = np.arange(k0, min(nz, k0 + per), dtype=np.float32)
        ijk = np.concatenate([np.hstack([plane, np.full((len(plane), 1), k, np.float32)]) for k in ks])
        w = (grid.origin.astype(np.float32) + (ijk * grid.spacing.astype(np.float32)) @ grid.axes.T.astype(np.float32))
        mni = pose.world_to_mni(w)
        for out, (arr, maps) in zip(outs, arrays):
            vox = (mni - maps.affine[:3, 3].astype(np.float32)) / np.float32(maps.resolution)
            vals = ndi.map_coordinates(arr, vox.T, order=1, mode="nearest")
            out[:, :, k0:k0 + len(ks)] = vals.reshape(len(ks), nx, ny).transpose(1, 2, 0)
    return outs


def splat(grid: Grid, centres_w: np.ndarray, tangents_w: np.ndarray, radius: np.ndarray, half_len: np.ndarray,
          axes_rel: np.ndarray | None = None, chunk: int = 4000):
    """Partial-volume fractions of capsules (tubes: tangent != 0) or spheres (tangent = 0) on the grid.

    Yields ``(sample_index (M,), flat_voxel_index (M,), fraction (M,))``. A structure thinner than the
    voxel is spread as a Gaussian carrying its true cross-section (tube) or volume (sphere), so a thin
    vein is a faint line and a small deposit a faint dot; a thick one is a disc with soft edges."""
    sp = grid.spacing
    s0 = 0.42 * float(np.cbrt(np.prod(sp)))
    c_idx = grid.index(centres_w)
    t_g = tangents_w @ grid.axes
    tube = np.linalg.norm(t_g, axis=1) > 0.5
    if axes_rel is None:
        axes_rel = np.ones((len(c_idx), 3))
    ext = np.ceil((radius[:, None] * axes_rel.max(1, keepdims=True) + 2.5 * s0 + half_len[:, None]) / sp).astype(int)
    shape = np.asarray(grid.shape)
    keys, inverse = np.unique(ext, axis=0, return_inverse=True)
    for key_i, key in enumerate(keys):
        members = np.flatnonzero(inverse.ravel() == key_i)
        offs = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in key], indexing="ij"), -1).reshape(-1, 3)
        step = max(1, chunk * 125 // len(offs))
        for s in range(0, len(members), step):
            idx = members[s:s + step]
            c = c_idx[idx]
            vox = np.floor(c).astype(int)[:, None, :] + offs[None]
            rel = (vox - c[:, None, :]) * sp
            r = radius[idx][:, None]
            t = t_g[idx]
            along = np.einsum("nkd,nd->nk", rel, t)
            perp2 = np.maximum(np.einsum("nkd,nkd->nk", rel, rel) - along ** 2, 0.0)
            excess = np.maximum(np.abs(along) - half_len[idx][:, None], 0.0)
            dist_tube = np.sqrt(perp2 + excess ** 2)
            rel_s = rel / axes_rel[idx][:, None, :]
            dist_sph = np.sqrt(np.einsum("nkd,nkd->nk", rel_s, rel_s))
            is_tube = tube[idx][:, None]
            dist = np.where(is_tube, dist_tube, dist_sph)
            thin = r < s0
            s2 = s0 ** 2 + r ** 2 / 2.0
            sphere_amp = (4.0 / 3.0) * r ** 3 / (2.0 * np.sqrt(2.0 * np.pi) * s2 ** 1.5)
            amp = np.where(is_tube, r ** 2 / (2.0 * s2), sphere_amp)
            frac = np.where(thin, np.minimum(amp, 1.0) * np.exp(-dist ** 2 / (2.0 * s2)),
                            0.5 * erfc((dist - r) / (np.sqrt(2.0) * s0)))
            ok = np.all((vox >= 0) & (vox < shape), axis=2) & (frac > 0.01)
            n_i, k_i = np.nonzero(ok)
            v = vox[n_i, k_i]
            flat = np.ravel_multi_index((v[:, 0], v[:, 1], v[:, 2]), grid.shape)
            yield idx[n_i], flat, frac[n_i, k_i].astype(np.float32)


def _tangents(points: np.ndarray, vessel: np.ndarray) -> np.ndarray:
    t = np.zeros_like(points)
    nxt = np.roll(points, -1, axis=0)
    prv = np.roll(points, 1, axis=0)
    same_n = np.roll(vessel, -1) == vessel
    same_p = np.roll(vessel, 1) == vessel
    t = np.where(same_n[:, None], nxt, points) - np.where(same_p[:, None], prv, points)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)


@dataclass
class Scene:
    """Sources on the fine grid (flat float32 arrays of the grid's size)."""

    chi: np.ndarray  # ppm vs tissue
    blood: np.ndarray  # blood volume fraction (veins)
    blood_phase: np.ndarray  # blood's own phase (rad), blood-fraction weighted mean
    artery: np.ndarray  # artery lumen fraction
    void: np.ndarray  # signal lost in deposits (0..1)
    dephase: np.ndarray  # sub-voxel extravascular dephasing rate (ppm-weighted volume fraction)


def build_scene(grid: Grid, vessels_w: np.ndarray, vessels, step_mm: float, foci_w: list[tuple[np.ndarray, object]],
                proto: EpsilonProtocol, scale: float) -> Scene:
    """Rasterize vessels (world centre lines) and foci (world centre, :class:`~.foci.Focus`)."""
    n = int(np.prod(grid.shape))
    chi = np.zeros(n, np.float32)
    blood = np.zeros(n, np.float32)
    num = np.zeros(n, np.float64)
    den = np.zeros(n, np.float64)
    artery = np.zeros(n, np.float32)
    void = np.zeros(n, np.float32)
    dephase = np.zeros(n, np.float32)
    from .veins import KINDS

    tang = _tangents(vessels_w, vessels.vessel)
    radius = vessels.radius * scale
    half = np.full(len(radius), 0.6 * step_mm * scale)
    is_art = vessels.kind == KINDS.index("artery")
    w_te = GAMMA * proto.field_t * proto.te_ms * 1e-3 * 1e-6
    cos2 = tang[:, 2] ** 2
    psi = -w_te * vessels.chi * (3.0 * cos2 - 1.0) / 6.0
    # static dephasing around a cylinder: frequency spread ~ chi sin^2(theta) / 2
    rate = vessels.chi * (1.0 - cos2) / 2.0
    margin = np.ceil((radius.max(initial=0) + 6.0) / grid.spacing.min())
    ijk = grid.index(vessels_w)
    keep = np.all((ijk > -margin) & (ijk < np.asarray(grid.shape) + margin), axis=1)
    sel = np.flatnonzero(keep)
    for i, flat, frac in splat(grid, vessels_w[sel], tang[sel], radius[sel], half[sel]):
        g = sel[i]
        art = is_art[g]
        np.maximum.at(artery, flat[art], frac[art])
        v = ~art
        np.maximum.at(blood, flat[v], frac[v])
        np.maximum.at(chi, flat[v], (frac * vessels.chi[g])[v])
        np.maximum.at(dephase, flat[v], (frac * rate[g])[v])
        num += np.bincount(flat[v], weights=(frac * psi[g])[v], minlength=n)
        den += np.bincount(flat[v], weights=frac[v], minlength=n)
    blood_phase = np.where(den > 0, num / np.maximum(den, 1e-9), 0.0).astype(np.float32)
    if foci_w:
        centres = np.array([c for c, _ in foci_w])
        core = np.array([f.core_mm * scale for _, f in foci_w])
        axes_rel = np.array([f.axes for _, f in foci_w])
        for i, flat, frac in splat(grid, centres, np.zeros_like(centres), core, np.zeros(len(core)), axes_rel):
            fchi = np.array([foci_w[j][1].chi for j in i], np.float32)
            fvoid = np.array([foci_w[j][1].void for j in i], np.float32)
            chi += np.bincount(flat, weights=frac * fchi, minlength=n).astype(np.float32)
            np.maximum.at(void, flat, np.minimum(frac, 1.0) * fvoid)
            np.maximum.at(dephase, flat, frac * np.abs(fchi) / 3.0)
    return Scene(chi=chi, blood=blood, blood_phase=blood_phase, artery=artery, void=void, dephase=dephase)


def complex_image(grid: Grid, proto: EpsilonProtocol, signal: np.ndarray, bg_field: np.ndarray, scene: Scene,
                  blood_signal: float, artery_level: float) -> np.ndarray:
    """(I, J, S) complex64 slices: the complex mean of each slice's sub-slices (see module docstring)."""
    shape = grid.shape
    b0 = grid.axes.T @ np.array([0.0, 0.0, 1.0])
    field = dipole_field(scene.chi.reshape(shape), grid.spacing, b0, pad=8)
    field += bg_field
    w_te = np.float32(GAMMA * proto.field_t * proto.te_ms * 1e-3 * 1e-6)
    deph = np.ones(shape, np.float32)
    for a in range(3):
        g = np.gradient(field, float(grid.spacing[a]), axis=a)
        deph *= np.abs(np.sinc(g * (w_te * np.float32(grid.spacing[a]) / np.float32(2 * np.pi))))
    del g
    phase = -w_te * field
    del field
    blood = scene.blood.reshape(shape)
    tissue = signal * (1.0 - scene.void.reshape(shape)) * (1.0 - scene.artery.reshape(shape) * (1.0 - artery_level))
    # sub-voxel dephasing of the tissue around sources thinner than the grid (static dephasing regime)
    tissue *= np.exp(-np.float32(STATIC_DEPHASING) * w_te * scene.dephase.reshape(shape))
    z = (tissue * (1.0 - blood)).astype(np.complex64)
    z += blood * np.float32(blood_signal) * np.exp(1j * (1.0 - blood) * scene.blood_phase.reshape(shape))
    z *= deph * np.exp(1j * phase)
    del deph, phase
    m = proto.sub_slices
    return z.reshape(shape[0], shape[1], shape[2] // m, m).mean(axis=3)


def coil_shading(grid: Grid, shape: tuple[int, int, int], spacing: np.ndarray, strength: float,
                 rng: np.random.Generator) -> np.ndarray:
    """(I, J, S) float32 smooth receive-coil intensity (root-sum-of-squares of 8–16 coils on a ring)."""
    n = int(rng.integers(8, 17))
    centre = (np.asarray(shape) - 1) / 2.0 * spacing
    angles = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n
    radius = rng.uniform(95.0, 120.0)
    sigma = rng.uniform(55.0, 85.0)
    axes = [np.arange(s, dtype=np.float32) * sp for s, sp in zip(shape, spacing)]
    total = np.zeros(shape, np.float32)
    for ang in angles:
        p = centre + np.array([radius * np.cos(ang), radius * np.sin(ang), rng.normal(0, 30.0)])
        e = [np.exp(-((ax - p[i]) ** 2) / (2 * sigma ** 2)).astype(np.float32) for i, ax in enumerate(axes)]
        total += (e[0][:, None, None] * e[1][None, :, None] * e[2][None, None, :]) ** 2
    total = np.sqrt(total)
    total /= float(np.median(total))
    return (1.0 + strength * (total - 1.0)).astype(np.float32)


def _window(n: int, kind: str) -> np.ndarray:
    k = (np.arange(n) - n // 2) / max(n / 2.0, 1.0)
    if kind == "hamming":
        return (0.54 + 0.46 * np.cos(np.pi * np.clip(k, -1, 1))).astype(np.float32)
    if kind == "fermi":
        return (1.0 / (1.0 + np.exp((np.abs(k) - 0.85) / 0.04))).astype(np.float32)
    return np.ones(n, np.float32)


def acquire(rng: np.random.Generator, proto: EpsilonProtocol, grid: Grid, slices: np.ndarray, noise_sigma: float,
            ) -> tuple[np.ndarray, Grid, EpsilonProtocol]:
    """Slices (I, J, S) complex at the fine in-plane step -> stored magnitude (N, N, S) float32 on the
    reconstruction grid, that grid (world geometry), and the protocol with the matrix sizes it used."""
    nx, ny, ns = slices.shape
    h = grid.spacing[0]
    n_sim = max(int(round(proto.fov_mm / h)), nx + 4, ny + 4)
    n_sim += n_sim % 2
    fov = n_sim * h
    n_acq = min(n_sim, max(8, int(round(fov / proto.acq_inplane_mm))))
    n_rec = max(n_acq, int(round(fov / proto.recon_inplane_mm)))
    r = fov / n_rec
    proto = replace(proto, fov_mm=float(fov), acq_inplane_mm=float(fov / n_acq), recon_inplane_mm=float(r))
    slice_spacing = grid.spacing[2] * proto.sub_slices
    shade = coil_shading(grid, (nx, ny, ns), np.array([h, h, slice_spacing]), proto.coil_shading, rng)
    pe_axis = int(rng.integers(0, 2))
    win = np.outer(_window(n_acq, proto.apodization), _window(n_acq, proto.apodization))
    keep = np.ones((n_acq, n_acq), bool)
    if proto.partial_fourier > 0:
        cut = int(proto.partial_fourier * n_acq)
        if pe_axis == 0:
            keep[:cut] = False
        else:
            keep[:, :cut] = False
    ghost_lines = np.zeros(n_acq, bool)
    if proto.ghost > 0:
        period = int(rng.integers(3, 9))
        ghost_lines[int(rng.integers(0, period))::period] = True
    shift_mm = proto.ghost * 25.0
    kline = (np.arange(n_acq) - n_acq // 2) / fov
    ghost_phase = np.exp(-2j * np.pi * kline * shift_mm).astype(np.complex64)
    swi = proto.contrast == "swi"
    if swi:
        kr = (np.arange(n_rec) - n_rec // 2) / fov
        kk = np.sqrt(kr[:, None] ** 2 + kr[None, :] ** 2) * proto.swi_filter_mm
        lowpass = np.where(kk < 1.0, 0.5 + 0.5 * np.cos(np.pi * kk), 0.0).astype(np.float32)
    out = np.empty((n_rec, n_rec, ns), np.float32)
    ox, oy = n_sim // 2 - nx // 2, n_sim // 2 - ny // 2
    a0, r0 = n_sim // 2 - n_acq // 2, n_rec // 2 - n_acq // 2
    for s in range(ns):
        img = np.zeros((n_sim, n_sim), np.complex64)
        img[ox:ox + nx, oy:oy + ny] = slices[:, :, s] * shade[:, :, s]
        k = fft.fftshift(fft.fft2(fft.ifftshift(img), norm="ortho"))[a0:a0 + n_acq, a0:a0 + n_acq]
        k *= np.float32(n_acq / n_sim)
        if proto.ghost > 0:
            if pe_axis == 0:
                k[ghost_lines] *= ghost_phase[ghost_lines][:, None]
            else:
                k[:, ghost_lines] *= ghost_phase[ghost_lines][None, :]
        k += (rng.normal(0, noise_sigma, k.shape) + 1j * rng.normal(0, noise_sigma, k.shape)).astype(np.complex64)
        k *= win * keep
        big = np.zeros((n_rec, n_rec), np.complex64)
        big[r0:r0 + n_acq, r0:r0 + n_acq] = k * np.float32(n_rec / n_acq)
        z = fft.fftshift(fft.ifft2(fft.ifftshift(big), norm="ortho"))
        mag = np.abs(z)
        if swi:
            low = fft.fftshift(fft.ifft2(fft.ifftshift(big * lowpass), norm="ortho"))
            phi = np.angle(z * np.conj(low))
            mask = np.where(phi < 0, np.clip(1.0 + phi / np.pi, 0.0, 1.0), 1.0)
            mag = mag * mask ** proto.swi_power
        out[:, :, s] = mag
    # geometry: recon pixel n_rec//2 sits where fine voxel nx//2 (ny//2) sits
    axes = grid.axes
    first = grid.origin + axes[:, 2] * grid.spacing[2] * (proto.sub_slices - 1) / 2.0
    centre = first + axes[:, 0] * h * (nx // 2) + axes[:, 1] * h * (ny // 2)
    origin = centre - (axes[:, 0] + axes[:, 1]) * r * (n_rec // 2)
    rec = Grid(axes=axes, spacing=np.array([r, r, slice_spacing]), shape=(n_rec, n_rec, ns), origin=origin)
    return out, rec, proto


def store(rng: np.random.Generator, proto: EpsilonProtocol, data: np.ndarray, rec: Grid, ref_value: float,
          ) -> nib.Nifti1Image:
    """Scale (``ref_value`` -> ``proto.max_value``), cast, and reorient into the protocol's axis codes."""
    scaled = data * np.float32(proto.max_value / max(ref_value, 1e-6))
    affine = rec.affine()
    current = io_orientation(affine)
    target = axcodes2ornt(tuple(proto.storage))
    transform = ornt_transform(current, target)
    arr = apply_orientation(scaled, transform)
    affine = affine @ inv_ornt_aff(transform, scaled.shape)
    if proto.dtype == "float32":
        arr = arr.astype(np.float32)
    else:
        top = 32767 if proto.dtype == "int16" else 65535
        arr = np.clip(np.rint(arr), 0, top).astype(np.int16 if proto.dtype == "int16" else np.uint16)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def label_map(img: nib.Nifti1Image, centres_w: np.ndarray, diameters: np.ndarray) -> nib.Nifti1Image:
    """uint16 truth labels in ``img``'s grid: microbleed ``n`` (1-based) on every voxel whose centre lies
    within its visible radius, and at least on the voxel nearest its centre."""
    shape = np.asarray(img.shape)
    lab = np.zeros(img.shape, np.uint16)
    inv = np.linalg.inv(img.affine)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    for n, (c, d) in enumerate(zip(centres_w, diameters), start=1):
        ijk = nib.affines.apply_affine(inv, c)
        ext = np.ceil(d / 2.0 / zooms).astype(int) + 1
        lo = np.maximum(np.floor(ijk).astype(int) - ext, 0)
        hi = np.minimum(np.floor(ijk).astype(int) + ext + 1, shape)
        box = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
        if len(box):
            dist = np.linalg.norm(nib.affines.apply_affine(img.affine, box) - c, axis=1)
            hit = box[dist <= d / 2.0]
            lab[tuple(hit.T)] = n
        near = np.clip(np.rint(ijk).astype(int), 0, shape - 1)
        lab[tuple(near)] = n
    out = nib.Nifti1Image(lab, img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    return out
