"""Delta scanner: slice grid, complex signal on thin sub-slices, local susceptibility sources
(veins as magnetised cylinders, foci as magnetised spheres) with analytic intravoxel dephasing,
slice-profile integration, k-space truncation, polynomial-exponential bias, complex noise, SWI
phase masking and storage.

Fine grid: acquisition axes (read, phase, slice) with ``sub_slices`` sub-slices per slice; fine
index ``(i, j, q)``, slice ``k = q // sub_slices``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cmbdet.anatomy import MniMaps

from .foci import Focus
from .head import HeadPose, rotation_about
from .protocol import FINE_VOXEL_BUDGET, DeltaProtocol
from .veins import KINDS, VeinSamples


@dataclass(frozen=True)
class SliceGrid:
    """Acquisition grid in scanner RAS. ``axes`` (3, 3) columns read/phase/slice unit vectors;
    ``origin_mm`` centre of voxel (0, 0, 0); ``voxel_mm`` (read, phase, slice); ``shape`` (I, J, K)."""

    axes: np.ndarray
    origin_mm: np.ndarray
    voxel_mm: np.ndarray
    shape: tuple[int, int, int]
    sub: int

    @property
    def affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = self.axes * self.voxel_mm
        a[:3, 3] = self.origin_mm
        return a

    @property
    def fine_voxel_mm(self) -> np.ndarray:
        return np.array([self.voxel_mm[0], self.voxel_mm[1], self.voxel_mm[2] / self.sub])

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return (self.shape[0], self.shape[1], self.shape[2] * self.sub)

    @property
    def fine_affine(self) -> np.ndarray:
        """Fine index (i, j, q) -> scanner RAS; sub-slices centred on their slice."""
        a = np.eye(4)
        a[:3, :3] = self.axes * self.fine_voxel_mm
        a[:3, 3] = self.origin_mm - self.axes[:, 2] * self.fine_voxel_mm[2] * (self.sub - 1) / 2.0
        return a

    def to_voxel(self, w: np.ndarray) -> np.ndarray:
        return (np.asarray(w, float) - self.origin_mm) @ self.axes / self.voxel_mm

    def inside(self, w: np.ndarray, margin_mm: float = 0.0) -> bool:
        ijk = self.to_voxel(w)
        m = margin_mm / self.voxel_mm
        return bool(np.all(ijk >= m - 0.5) and np.all(ijk <= np.array(self.shape) - 0.5 - m))


def place_grid(rng: np.random.Generator, proto: DeltaProtocol, pose: HeadPose, maps2: MniMaps,
               head_top_mm: float) -> SliceGrid:
    """Axial slab over the head (whole brain, or cut ``vertex_cut_mm`` below the brain top)."""
    if proto.oblique_deg > 0:
        axis = np.array([1.0, 0.0, 0.0]) + rng.normal(0.0, 0.4, 3)
        axes = rotation_about(axis, proto.oblique_deg)
    else:
        axes = np.eye(3)
    step = 3
    sel = (slice(None, None, step),) * 3
    d_env = maps2.d_env[sel]
    skin = np.argwhere((d_env > head_top_mm - 2.0) & (d_env <= head_top_mm) & (maps2.lower_head[sel] < 0.5))
    brain = np.argwhere(maps2.brain[sel])
    to_mm = maps2.affine[:3, 3]
    skin_w = pose.mni_to_world(to_mm + maps2.resolution * step * skin) @ axes
    brain_w = pose.mni_to_world(to_mm + maps2.resolution * step * brain) @ axes
    vox = np.array([proto.in_plane_mm, proto.in_plane_mm, proto.slice_mm])
    lo = skin_w.min(0) - 3.0
    hi = skin_w.max(0) + 3.0
    lo[2] = brain_w[:, 2].min() - rng.uniform(2.0, 12.0)
    hi[2] = skin_w[:, 2].max() + 2.0 if proto.vertex_cut_mm == 0 else brain_w[:, 2].max() - proto.vertex_cut_mm
    shape = np.maximum(np.ceil((hi - lo) / vox).astype(int), 8)
    if proto.tiny:  # keep the centre of the slab
        lo = lo + np.maximum(shape - 80, 0) * vox / 2.0
        shape = np.minimum(shape, 80)
    origin = axes @ (lo + vox / 2.0)
    sub = int(max(1, min(proto.sub_slices, FINE_VOXEL_BUDGET // int(np.prod(shape)))))
    return SliceGrid(axes=axes, origin_mm=origin, voxel_mm=vox, shape=(int(shape[0]), int(shape[1]), int(shape[2])),
                     sub=sub)


def _lerp_matrix(n: int, stride: int) -> np.ndarray:
    """(n, n_coarse) linear interpolation weights from samples at 0, stride, 2 stride, ..."""
    nc = (n - 1) // stride + 1
    pos = np.arange(n) / stride
    lo = np.minimum(np.floor(pos).astype(int), max(nc - 2, 0))
    frac = pos - lo
    w = np.zeros((n, nc))
    w[np.arange(n), lo] = 1.0 - frac
    if nc > 1:
        w[np.arange(n), lo + 1] = frac
    else:
        w[:, 0] = 1.0
    return w


def sample_head(grid: SliceGrid, pose: HeadPose, signal: np.ndarray, maps: MniMaps, field_ppm: np.ndarray,
                maps2: MniMaps, w_te: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue magnitude and background phase (rad) on the fine grid, each (I, J, Q) float32."""
    ni, nj, nq = grid.fine_shape
    fa = grid.fine_affine
    ii, jj = np.meshgrid(np.arange(ni, dtype=np.float32), np.arange(nj, dtype=np.float32), indexing="ij")
    plane = (ii[..., None] * fa[:3, 0] + jj[..., None] * fa[:3, 1]).reshape(-1, 3)
    mag = np.empty((ni, nj, nq), np.float32)
    phase = np.empty((ni, nj, nq), np.float32)
    inv_rot = pose.rotation / pose.scale  # (w - t) @ inv_rot = u
    # the warp is smooth: evaluate it every 4th voxel in-plane, interpolate linearly (separable)
    wi, wj = _lerp_matrix(ni, 4), _lerp_matrix(nj, 4)
    for q in range(nq):
        w = plane + (fa[:3, 3] + q * fa[:3, 2])
        u = (w - pose.shift_mm) @ inv_rot
        u_coarse = u.reshape(ni, nj, 3)[::4, ::4].reshape(-1, 3)
        disp = (pose.head_to_mni(u_coarse) - u_coarse).reshape(wi.shape[1], wj.shape[1], 3)
        m = u + np.einsum("ia,abc,jb->ijc", wi, disp, wj, optimize=True).reshape(-1, 3)
        mag[:, :, q] = ndi.map_coordinates(signal, maps.mm_to_vox(m).T, order=1, cval=0.0).reshape(ni, nj)
        phase[:, :, q] = ndi.map_coordinates(field_ppm, maps2.mm_to_vox(m).T, order=1, cval=0.0).reshape(ni, nj)
    phase *= np.float32(-w_te)
    # intravoxel dephasing by the smooth background gradient (box voxel: sinc per axis)
    loss = np.ones_like(mag)
    for ax in range(3):
        g = np.gradient(phase, axis=ax)
        loss *= np.abs(np.sinc(g / (2.0 * np.pi)))
    mag *= loss
    return mag, phase


def _dipole_patch(grid: SliceGrid, centre: np.ndarray, reach_mm: float):
    """Fine-grid index box around ``centre``: (box slices, world coords (N, 3))."""
    fa = grid.fine_affine
    c = np.linalg.solve(fa[:3, :3], centre - fa[:3, 3])
    half = reach_mm / grid.fine_voxel_mm
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int) + 1, np.array(grid.fine_shape))
    if np.any(hi <= lo):
        return None, None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    return box, idx @ fa[:3, :3].T + fa[:3, 3]


def _sinc_loss(grad: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """(N, 3) phase gradient (rad/mm, world) -> (N,) |signal| left in a box voxel."""
    g_vox = (grad @ grid.axes) * grid.fine_voxel_mm
    return np.abs(np.prod(np.sinc(g_vox / (2.0 * np.pi)), axis=1))


def render_foci(mag: np.ndarray, phase: np.ndarray, grid: SliceGrid, foci: list[Focus], w_te: float) -> None:
    """Magnetised spheres: dark core plus dipole dephasing around it, phase added (in place)."""
    h = float(np.mean(grid.fine_voxel_mm))
    vmax = float(grid.fine_voxel_mm.max())
    for f in foci:
        k = w_te * f.chi_ppm / 3.0 * f.core_mm ** 3  # phase = -k (3 z^2 - d^2) / d^5
        reach = max((6.0 * abs(k) * vmax / 0.4) ** 0.25, f.diameter_mm / 2.0) + 2.0 * vmax
        box, w = _dipole_patch(grid, f.centre_world, min(reach, 20.0))
        if box is None:
            continue
        v = w - f.centre_world
        d = np.maximum(np.linalg.norm(v, axis=1), 1e-3)
        dd = np.maximum(d, f.core_mm)
        z = v[:, 2]
        shape_f = (3 * z * z - dd * dd) / dd ** 5
        grad_f = (np.stack([-2 * v[:, 0], -2 * v[:, 1], 4 * z], 1) / dd[:, None] ** 5
                  - 5 * (3 * z * z - dd * dd)[:, None] * v / dd[:, None] ** 7)
        outside = d > f.core_mm
        phi = np.where(outside, -k * shape_f, 0.0) * f.strength
        loss = np.where(outside, _sinc_loss(-k * grad_f, grid), 1.0)
        dephase = 1.0 - f.strength * (1.0 - loss)
        core = np.clip((f.core_mm - d) / h + 0.5, 0.0, 1.0)
        core_sig = 1.0 - (0.5 + 0.5 * f.strength) * (1.0 - f.core_signal)  # the deposit stays dark
        factor = (1.0 - core) * dephase + core * core_sig
        shp = tuple(s.stop - s.start for s in box)
        mag[box] *= factor.reshape(shp).astype(np.float32)
        phase[box] += phi.reshape(shp).astype(np.float32)


def _tube_occupancy(radius: np.ndarray, d: np.ndarray, vperp: np.ndarray, excess: np.ndarray, tangent: np.ndarray,
                    grid: SliceGrid) -> np.ndarray:
    """Fraction of each fine (box) voxel inside a tube of ``radius`` (mm, (N,)) whose axis passes
    ``d`` mm from the voxel centre (perpendicular offset ``vperp`` (N, 3) and axis ``tangent`` (N, 3),
    world; ``excess`` mm beyond the tube's end).  Wide tubes: a flat top with a one-voxel ramp;
    thin ones: the tube's volume in the voxel (pi r^2 x chord) given to the voxels its axis crosses."""
    fv = grid.fine_voxel_mm
    t_grid = tangent @ grid.axes
    h = np.sqrt(0.5 * ((1 - t_grid ** 2) * fv ** 2).sum(1))
    chord = 1.0 / np.max(np.abs(t_grid) / fv, axis=1)
    share = np.minimum(np.pi * radius ** 2 * chord / float(np.prod(fv)), 1.0)
    n = np.abs(vperp @ grid.axes) / fv
    soft = radius[:, None] / fv + 0.15
    in_box = np.prod(np.clip((0.5 - n) / soft + 0.5, 0.0, 1.0), axis=1)
    tail = np.exp(-0.5 * (excess / np.maximum(radius, 0.3)) ** 2)
    wide = np.clip((radius - d) / h + 0.5, 0.0, 1.0)
    return np.where(radius >= h, wide, share * in_box * tail)


def render_veins(mag: np.ndarray, phase: np.ndarray, grid: SliceGrid, veins: VeinSamples, w_te: float,
                 chi_ppm: float, blood_signal: float) -> None:
    """Veins as magnetised cylinders: intravascular blood signal and phase, extravascular 2-D
    dipole phase with its analytic in-voxel dephasing (depends on calibre and angle to B0)."""
    if len(veins) == 0:
        return
    fv = grid.fine_voxel_mm
    fa = grid.fine_affine
    inv = np.linalg.inv(fa)
    artery = veins.kind == KINDS.index("artery")  # flow voids: no deoxyhaemoglobin, no signal
    sin2 = np.where(artery, 0.0, 1.0 - veins.tangent[:, 2] ** 2)
    reach = veins.radius_mm + (w_te * chi_ppm * sin2 * veins.radius_mm ** 2 * fv.max() / 0.3) ** (1.0 / 3.0)
    bloom = veins.radius_mm * np.sqrt(np.maximum(w_te * chi_ppm / 2.0 * sin2, 1.0))
    reach = np.minimum(np.maximum(reach, bloom), 10.0) + 0.8 * fv.max()
    centre = np.rint(veins.points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    shape = np.array(grid.fine_shape)
    lin_all = []
    bins = np.ceil(reach / 0.5) * 0.5
    for b in np.unique(bins):
        sel = np.unique(centre[bins == b], axis=0)
        half = np.ceil(b / fv).astype(int)
        off = np.stack(np.meshgrid(*[np.arange(-hh, hh + 1) for hh in half], indexing="ij"), -1).reshape(-1, 3)
        off = off[((off * fv) ** 2).sum(1) <= b * b]
        step = max(1, 1_500_000 // len(off))
        for chunk in range(0, len(sel), step):
            idx = (sel[chunk:chunk + step, None, :] + off[None]).reshape(-1, 3)
            ok = np.all((idx >= 0) & (idx < shape), axis=1)
            lin_all.append(np.ravel_multi_index(idx[ok].T, grid.fine_shape))
    lin = np.unique(np.concatenate(lin_all))
    ijk = np.stack(np.unravel_index(lin, grid.fine_shape), 1)
    w = ijk @ fa[:3, :3].T + fa[:3, 3]
    dist, near = cKDTree(veins.points).query(w, k=1)
    p, t, r = veins.points[near], veins.tangent[near], veins.radius_mm[near]
    keep = dist <= reach[near]
    w, p, t, r, lin, near = w[keep], p[keep], t[keep], r[keep], lin[keep], near[keep]
    void = artery[near]
    chi = np.where(void, 0.0, chi_ppm)
    v = w - p
    along = (v * t).sum(1)
    vperp = v - along[:, None] * t
    dperp = np.linalg.norm(vperp, axis=1)
    excess = np.maximum(np.abs(along) - veins.spacing_mm / 2.0, 0.0)
    d = np.sqrt(dperp ** 2 + excess ** 2)
    e_rho = vperp / np.maximum(dperp, 1e-6)[:, None]
    tz = t[:, 2]
    s2 = np.clip(1.0 - tz ** 2, 0.0, 1.0)
    b_perp = np.array([0.0, 0.0, 1.0]) - tz[:, None] * t
    b_perp /= np.maximum(np.linalg.norm(b_perp, axis=1), 1e-6)[:, None]
    cos_psi = (e_rho * b_perp).sum(1)
    sin_psi = (e_rho * np.cross(t, b_perp)).sum(1)
    cos2, sin2psi = 2 * cos_psi ** 2 - 1, 2 * sin_psi * cos_psi
    # static dephasing: within r_bloom of the axis the extravascular phase exceeds ~1 rad and the
    # spins there cancel; beyond it the voxel keeps a coherent phase with a sinc loss of its gradient
    surface_phase = w_te * chi / 2.0 * s2  # |phase| at the vessel wall (rad)
    r_bloom = r * np.sqrt(np.maximum(surface_phase, 1.0))
    dd = np.maximum(d, r_bloom)
    amp = surface_phase * r ** 2  # phase_out = -amp cos(2 psi) / d^2
    phi_out = -amp * cos2 / dd ** 2
    e_psi = np.cross(t, e_rho)
    grad = (2 * amp / dd ** 3)[:, None] * (cos2[:, None] * e_rho + sin2psi[:, None] * e_psi)
    loss = _sinc_loss(grad, grid)
    phi_in = -w_te * chi / 6.0 * (3 * tz ** 2 - 1)
    inside_signal = np.where(void, 0.03 * blood_signal, blood_signal)
    occ_blood = _tube_occupancy(r, d, vperp, excess, t, grid)
    occ_bloom = np.maximum(_tube_occupancy(r_bloom, d, vperp, excess, t, grid), occ_blood)
    flat_mag = mag.reshape(-1)
    flat_phase = phase.reshape(-1)
    tissue = flat_mag[lin]
    s = ((1.0 - occ_bloom) * tissue * loss * np.exp(1j * phi_out) + occ_blood * inside_signal * np.exp(1j * phi_in)
         + 0.1 * (occ_bloom - occ_blood) * tissue)
    flat_mag[lin] = np.abs(s).astype(np.float32)
    flat_phase[lin] += np.angle(s).astype(np.float32)


def _profile(sub: int, kind: str) -> np.ndarray:
    w = np.ones(sub)
    if kind == "soft" and sub >= 3:
        w[0] = w[-1] = 0.5
    return w / w.sum()


def _bias(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """exp(sum of Legendre products up to total degree 3), std of the log about ``strength``."""
    coords = [np.linspace(-1.0, 1.0, n) for n in shape]
    log_b = np.zeros(shape, np.float32)
    terms = [(a, b, c) for a in range(4) for b in range(4) for c in range(4) if 1 <= a + b + c <= 3]
    coef = rng.normal(0.0, 1.0, len(terms)) / np.sqrt(len(terms))
    for (a, b, c), k in zip(terms, coef):
        px = legendre.legval(coords[0], np.eye(4)[a])
        py = legendre.legval(coords[1], np.eye(4)[b])
        pz = legendre.legval(coords[2], np.eye(4)[c])
        log_b += np.float32(k) * (px[:, None, None] * py[None, :, None] * pz[None, None, :]).astype(np.float32)
    sd = float(log_b.std()) or 1.0
    return np.exp(log_b * np.float32(strength / sd))


def acquire(rng: np.random.Generator, proto: DeltaProtocol, grid: SliceGrid, mag: np.ndarray, phase: np.ndarray,
            wm_signal: float) -> np.ndarray:
    """Fine complex signal -> stored-grid magnitude (SWI or GRE), (I, J, K) float32."""
    ni, nj, nk = grid.shape
    prof = _profile(grid.sub, proto.slice_profile).astype(np.float32)
    re = (mag * np.cos(phase)).reshape(ni, nj, nk, grid.sub) @ prof
    im = (mag * np.sin(phase)).reshape(ni, nj, nk, grid.sub) @ prof
    sig = re.astype(np.complex64) + 1j * im.astype(np.complex64)
    del re, im
    if proto.kspace_keep < 1.0:
        k = np.fft.fftshift(np.fft.fft2(sig, axes=(0, 1)), axes=(0, 1))
        for ax, n in ((0, ni), (1, nj)):
            keep = np.abs(np.arange(n) - n // 2) <= proto.kspace_keep * n / 2
            shp = [1, 1, 1]
            shp[ax] = n
            k *= keep.reshape(shp)
        sig = np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 1)), axes=(0, 1)).astype(np.complex64)
    sig *= _bias(rng, grid.shape, proto.bias_strength)
    sigma = wm_signal / proto.snr
    sig += (rng.normal(0.0, sigma, sig.shape) + 1j * rng.normal(0.0, sigma, sig.shape)).astype(np.complex64)
    out = np.abs(sig)
    if proto.sequence == "swi":
        s = proto.highpass_mm / proto.in_plane_mm
        low = ndi.gaussian_filter(sig.real, (s, s, 0)) + 1j * ndi.gaussian_filter(sig.imag, (s, s, 0))
        hp = np.angle(sig * np.conj(low))
        mask = np.where(hp < 0, np.clip(1.0 + hp / np.pi, 0.0, 1.0), 1.0).astype(np.float32)
        out *= mask ** proto.phase_mask_power
    return out.astype(np.float32)


def store(rng: np.random.Generator, proto: DeltaProtocol, grid: SliceGrid, mag: np.ndarray) -> nib.Nifti1Image:
    """Reorder/flip the acquisition axes as drawn, scale, and wrap as NIfTI (sform = qform)."""
    order = [int(c) for c in proto.axis_order]
    flips = [c == "1" for c in proto.axis_flips]
    data = np.transpose(mag, order)
    t = np.zeros((4, 4))
    t[3, 3] = 1.0
    for d, ax in enumerate(order):
        if flips[d]:
            data = np.flip(data, axis=d)
            t[ax, d] = -1.0
            t[ax, 3] = grid.shape[ax] - 1
        else:
            t[ax, d] = 1.0
    affine = grid.affine @ t
    top = float(np.percentile(data, 99.5)) or 1.0
    data = data * np.float32(rng.uniform(800.0, 3000.0) / top)
    if proto.storage == "int16":
        data = np.clip(np.rint(data), 0, 32767).astype(np.int16)
    else:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img
