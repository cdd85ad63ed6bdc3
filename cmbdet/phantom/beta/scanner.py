"""The "beta" scanner: grid placement, anatomy sampling, slice profile, SWI processing, noise,
artefacts and storage.

Canonical frame: the scan is first built with array axes (read, phase, slice) along the
(oblique) grid axes close to +x, +y, +z; it is reoriented to the protocol's axis codes only when
stored, with the affine updated by nibabel's orientation functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cmbdet.anatomy import MniMaps

from .deform import SubjectWarp, rotation
from .draw import FineGrid, interp_separable
from .protocol import BetaProtocol

GAMMA_HZ_PER_T = 42.577e6


@dataclass(frozen=True)
class ScanGrid:
    """affine: 4x4 stored-grid (canonical order) index -> world mm; shape (I, J, K); fine grid."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    fine: FineGrid
    rot: np.ndarray  # (3, 3) grid axes (columns) in world

    def inside(self, world: np.ndarray, margin_mm: float = 0.0) -> bool:
        """World point inside the stored field of view by at least ``margin_mm`` (and one voxel)."""
        idx = np.linalg.inv(self.affine)[:3] @ np.append(world, 1.0)
        vox = np.linalg.norm(self.affine[:3, :3], axis=0)
        m = margin_mm / vox + 1.0
        return bool(np.all(idx >= m) and np.all(idx <= np.array(self.shape) - 1 - m))


def phase_per_ppm(proto: BetaProtocol) -> float:
    """Radians of phase per ppm off-resonance at the protocol's TE and field (negative sign
    convention: paramagnetic field offsets give negative phase)."""
    return -2.0 * np.pi * GAMMA_HZ_PER_T * proto.field_t * 1e-6 * proto.te_ms * 1e-3


def place_grid(rng: np.random.Generator, proto: BetaProtocol, warp: SubjectWarp) -> ScanGrid:
    """Scan grid around the subject's head: oblique rotation, FOV, coverage (partial or full)."""
    if proto.oblique_deg > 0:
        ang = np.array([rng.uniform(0.6, 1.0), rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4)])
        ang *= proto.oblique_deg / max(np.abs(ang).max(), 1e-6) * rng.choice([-1.0, 1.0])
        rot = rotation(ang)
    else:
        rot = np.eye(3)
    head = warp.to_world(np.array([[0.0, -18.0, 8.0]]))[0]
    vox = np.array(proto.voxel_mm)
    shape = np.array([proto.fov_read_mm / vox[0], proto.fov_phase_mm / vox[1], proto.coverage_mm / vox[2]])
    shape = np.maximum(np.round(shape).astype(int), 8)
    if proto.tiny:
        shape = np.minimum(shape, 80)
    # slab position along the slice axis: full coverage centred on the brain, partial shifted
    slab_shift = 0.0
    if proto.partial_coverage:
        slab_shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * max(150.0 - proto.coverage_mm, 0.0) / 2
    centre = head + rot @ np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), slab_shift + rng.uniform(-4, 4)])
    aff = np.eye(4)
    aff[:3, :3] = rot * vox
    aff[:3, 3] = centre - aff[:3, :3] @ ((shape - 1) / 2.0)
    ns = proto.subslices
    sub = np.eye(4)
    sub[2, 2] = 1.0 / ns
    sub[2, 3] = 0.5 / ns - 0.5
    fine = FineGrid(affine=aff @ sub, shape=(int(shape[0]), int(shape[1]), int(shape[2]) * ns),
                    voxel=(float(vox[0]), float(vox[1]), float(vox[2]) / ns))
    return ScanGrid(affine=aff, shape=tuple(int(s) for s in shape), fine=fine, rot=rot)


def sample_anatomy(
    grid: ScanGrid,
    warp: SubjectWarp,
    maps: MniMaps,
    intensity_mni: np.ndarray,
    field_mni: np.ndarray,
    proto: BetaProtocol,
    coarse_mm: float,
    rng: np.random.Generator,
    texture: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue magnitude and background phase (rad) on the fine grid, (I, J, F) float32 each.

    The warp is inverted on a 5 mm lattice of the scan frame, maps are sampled on a
    ``coarse_mm`` lattice, through-slice dephasing from the background field is applied there,
    and both are interpolated linearly onto the fine grid.
    """
    fine = grid.fine
    ext = (np.array(fine.shape) - 1) * np.array(fine.voxel)
    origin = fine.affine[:3, 3]

    def lattice(step: float) -> list[np.ndarray]:
        return [np.arange(int(np.ceil(e / step)) + 2) * step for e in ext]

    big = lattice(5.0)
    B = np.stack(np.meshgrid(*big, indexing="ij"), -1).reshape(-1, 3)
    mni_big = warp.to_mni(origin + B @ grid.rot.T).reshape(*[len(a) for a in big], 3)
    small = lattice(coarse_mm)
    pos = [a / 5.0 for a in small]
    mni = np.stack([interp_separable(mni_big[..., k], pos) for k in range(3)])
    idx = (mni - maps.affine[:3, 3][:, None, None, None]) / maps.resolution
    inten = ndi.map_coordinates(intensity_mni, idx, order=1, mode="constant", cval=0.0).astype(np.float32)
    fld = ndi.map_coordinates(field_mni, idx, order=1, mode="nearest").astype(np.float32)
    phase = fld * phase_per_ppm(proto)
    # intra-sub-slice dephasing from the background gradient (sinc of the phase spread)
    g_slice = np.gradient(phase, coarse_mm, axis=2) * fine.voxel[2]
    g_read = np.gradient(phase, coarse_mm, axis=0) * fine.voxel[0]
    g_phase = np.gradient(phase, coarse_mm, axis=1) * fine.voxel[1]
    loss = np.abs(np.sinc(g_slice / (2 * np.pi)) * np.sinc(g_read / (2 * np.pi)) * np.sinc(g_phase / (2 * np.pi)))
    inten *= loss.astype(np.float32)
    if texture > 0:  # smooth multiplicative tissue texture, ~10 mm grain
        tex = rng.normal(0.0, 1.0, [len(a) // 8 + 2 for a in small]).astype(np.float32)
        inten *= 1.0 + np.float32(texture) * interp_separable(tex, [np.arange(len(a)) / 8.0 for a in small])
    fpos = [np.arange(n) * v / coarse_mm for n, v in zip(fine.shape, fine.voxel)]
    return interp_separable(inten, fpos), interp_separable(phase, fpos)


def slice_profile(ns: int, rng: np.random.Generator) -> np.ndarray:
    """(ns,) weights of the sub-slices: a rounded excitation profile, sum 1."""
    if ns == 1:
        return np.ones(1, np.float32)
    off = (np.arange(ns) + 0.5) / ns - 0.5
    w = np.exp(-0.5 * (off / rng.uniform(0.3, 0.6)) ** 2)
    return (w / w.sum()).astype(np.float32)


def _lattice_field(grid: ScanGrid, fn, step_mm: float = 8.0) -> np.ndarray:
    """Evaluate fn(x, y, z in scan-frame mm relative to the grid centre) on a coarse lattice and
    interpolate to the stored grid (I, J, K)."""
    vox = np.linalg.norm(grid.affine[:3, :3], axis=0)
    ext = (np.array(grid.shape) - 1) * vox
    axes = [np.arange(int(np.ceil(e / step_mm)) + 2) * step_mm - e / 2 for e in ext]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    vals = fn(X, Y, Z).astype(np.float32)
    pos = [np.arange(n) * v / step_mm for n, v in zip(grid.shape, vox)]
    return interp_separable(vals, pos)


def receive_bias(rng: np.random.Generator, grid: ScanGrid, proto: BetaProtocol) -> np.ndarray:
    """(I, J, K) receive sensitivity: a ring coil array (3 T) or a gentle polynomial (1.5 T)."""
    if proto.field_t >= 3.0:
        nc = int(rng.integers(8, 33))
        ang = np.sort(rng.uniform(0, 2 * np.pi, nc))
        rad = rng.uniform(95.0, 125.0)
        cz = rng.uniform(-50.0, 50.0, nc)
        length = rng.uniform(60.0, 110.0)
        gains = rng.uniform(0.7, 1.3, nc)
        keep = rng.uniform(0.0, 0.8)  # prescan normalization removes part of the profile

        def fn(x, y, z):
            tot = np.zeros_like(x)
            for a, h, gn in zip(ang, cz, gains):
                d2 = (x - rad * np.cos(a)) ** 2 + (y - rad * np.sin(a)) ** 2 + (z - h) ** 2
                tot += gn * (1.0 + d2 / length**2) ** -1.5
            sos = np.sqrt(tot)
            return (sos / np.median(sos)) ** (1.0 - keep)
    else:
        c = rng.normal(0.0, 1.0, 6) * np.array([0.08, 0.08, 0.08, 0.05, 0.05, 0.05])

        def fn(x, y, z):
            u, v, w = x / 100.0, y / 100.0, z / 100.0
            return np.clip(1.0 + c[0] * u + c[1] * v + c[2] * w + c[3] * u * v + c[4] * u * u + c[5] * w * w,
                           0.5, 1.6)
    return _lattice_field(grid, fn)


def g_factor(grid: ScanGrid, proto: BetaProtocol) -> np.ndarray:
    """(I, J, 1) noise amplification of parallel imaging along the phase axis (1 = none)."""
    if proto.accel <= 1:
        return np.ones((1, 1, 1), np.float32)
    nx, ny = grid.shape[0], grid.shape[1]
    y = (np.arange(ny) - ny / 2) / ny
    x = (np.arange(nx) - nx / 2) / nx
    gy = np.exp(-((y / 0.3) ** 2)) * (0.6 + 0.4 * np.cos(2 * np.pi * proto.accel * y))
    gx = np.exp(-((x / 0.35) ** 2))
    return (1.0 + 0.35 * (proto.accel - 1) * gx[:, None] * gy[None, :])[..., None].astype(np.float32)


def lowpass_inplane(z: np.ndarray, block: int) -> np.ndarray:
    """In-plane low-pass of a complex (I, J, K) array: block means, Gaussian, linear upsampling."""
    nx, ny, nk = z.shape
    px, py = (-nx) % block, (-ny) % block
    zp = np.pad(z, ((0, px), (0, py), (0, 0)), mode="edge")
    small = zp.reshape((nx + px) // block, block, (ny + py) // block, block, nk).mean(axis=(1, 3))
    re = ndi.gaussian_filter(small.real, (1.0, 1.0, 0))
    im = ndi.gaussian_filter(small.imag, (1.0, 1.0, 0))
    pos = [(np.arange(nx) + 0.5) / block - 0.5, (np.arange(ny) + 0.5) / block - 0.5, np.arange(nk)]
    return interp_separable(re, pos) + 1j * interp_separable(im, pos)


def acquire(
    rng: np.random.Generator,
    proto: BetaProtocol,
    grid: ScanGrid,
    magnitude_fine: np.ndarray,
    phase_fine: np.ndarray,
) -> np.ndarray:
    """Fine-grid magnitude and phase -> stored magnitude (I, J, K) float32, canonical order.

    Slice-profile integration (complex sum over sub-slices), coil bias, complex g-factor noise,
    optional motion ghosts and truncation ringing, then SWI phase-mask processing or plain
    GRE magnitude.
    """
    ns = proto.subslices
    ni, nj, nk = grid.shape
    w = slice_profile(ns, rng)
    z = np.empty(magnitude_fine.shape, np.complex64)
    z.real = magnitude_fine * np.cos(phase_fine)
    z.imag = magnitude_fine * np.sin(phase_fine)
    if ns > 1:  # complex sum over the sub-slices with the slice profile (intra-voxel dephasing)
        z4 = z.reshape(ni, nj, nk, ns)
        acc = z4[..., 0] * w[0]
        for q in range(1, ns):
            acc += z4[..., q] * w[q]
        z = acc
    z *= receive_bias(rng, grid, proto)
    if proto.ghosting > 0:
        k = int(rng.choice([2, 3, 4]))
        ghost = np.zeros_like(z)
        for m in (1, -1, 2, -2):
            amp = proto.ghosting * 0.5 ** (abs(m) - 1) * np.exp(1j * rng.uniform(0, 2 * np.pi))
            ghost += amp * np.roll(z, m * nj // k, axis=1)
        z += ghost
    sigma = 1.0 / proto.snr
    noise = rng.standard_normal((ni, nj, nk), dtype=np.float32) + 1j * rng.standard_normal((ni, nj, nk),
                                                                                             dtype=np.float32)
    z += (sigma * g_factor(grid, proto)) * noise
    del noise
    if proto.ringing > 0:
        kz = np.fft.fft(z, axis=0)
        freq = np.abs(np.fft.fftfreq(ni))
        kz[freq > 0.5 * (1.0 - proto.ringing)] = 0
        z = np.fft.ifft(kz, axis=0).astype(np.complex64)
    mag = np.abs(z).astype(np.float32)
    if proto.sequence == "swi":
        block = max(2, int(round(proto.hp_filter_mm / 2.0 / proto.voxel_read_mm)))
        lp = lowpass_inplane(z, block)
        phi = np.angle(z * np.conj(lp)).astype(np.float32)
        mask = np.where(phi < 0, np.clip(1.0 + phi / np.pi, 0.0, 1.0), 1.0).astype(np.float32)
        mag *= mask**proto.phase_mask_power
    return mag


def store(rng: np.random.Generator, proto: BetaProtocol, grid: ScanGrid, mag: np.ndarray) -> nib.Nifti1Image:
    """Reorient to the protocol's axis codes and store as int16/uint16/float32 with scaling."""
    src = nib.orientations.io_orientation(grid.affine)
    dst = nib.orientations.axcodes2ornt(tuple(proto.axcodes))
    tr = nib.orientations.ornt_transform(src, dst)
    data = nib.orientations.apply_orientation(mag, tr)
    aff = grid.affine @ nib.orientations.inv_ornt_aff(tr, mag.shape)
    top = float(np.percentile(mag[mag > 0], 99.5)) if np.any(mag > 0) else 1.0
    slope = proto.scl_slope
    if proto.storage == "int16":
        raw = np.clip(np.round(data * (rng.uniform(1500.0, 30000.0) / top) / slope), 0, 32767).astype(np.int16)
    elif proto.storage == "uint16":
        raw = np.clip(np.round(data * (rng.uniform(1000.0, 4000.0) / top) / slope), 0, 65535).astype(np.uint16)
    else:
        raw = (data * (10.0 ** rng.uniform(-2.0, 3.0) / top)).astype(np.float32)
    img = nib.Nifti1Image(raw, aff)
    img.header.set_data_dtype(raw.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if proto.storage != "float32":
        img.header.set_slope_inter(slope, 0.0)
    return nib.Nifti1Image.from_bytes(img.to_bytes())  # behaves like a file read from disk
