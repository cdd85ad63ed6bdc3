"""Domain randomization for the training family (``cmbdet phantom --family randomized``).

A site can change tissue contrast, vessel appearance, how a microbleed blooms, the noise and the
post-processing (SWI phase masks). A network trained on one generator's particular values learns
those values; here each of them is drawn over a range much wider than any one site, so that the
only thing constant across training scans is what a microbleed is — as SynthSeg / SynthStrip do
for segmentation. Each ingredient can be switched off on its own (``--without``) to measure what it
buys on the validation family.

Ingredients (`Randomization` fields):

* ``tissue``: grey/white/CSF intensities drawn independently (white matter may be brighter than
  grey), deep-nuclei iron from faint to strong, tissue texture, fat and diploe.
* ``vessels``: vein calibre (x0.5-1.8), count (x0.6-2), contrast (x0.6-1.3), tortuosity (smooth
  random wiggles of 0.3-3 mm amplitude on the small veins), plus thin tortuous veins (0.3-1.5 mm)
  in the white matter and cortex that cross the slices at any angle — the mimic that dominates
  false positives.
* ``cmb_profile``: microbleed contrast from faint to black, edge from sharp to smooth, a faint halo,
  elongation up to 1.7:1 and lumpy (irregular) outlines.
* ``noise``: multi-coil (noncentral chi) noise with a smooth g-factor map, SNR 5-60, stronger and
  coarser or finer bias fields, more ghosting/ringing.
* ``swi_mask``: SWI phase-mask processing on some scans: the field of the susceptibility sources is
  simulated with the dipole kernel along B0, high-pass filtered, and the negative phase mask is
  multiplied into the magnitude 2-5 times (dipole-shaped halos, darker veins).
* ``resolution``: slices thicker than the protocol table's 4 mm: on 40 % of scans the slices are
  redrawn at 4-6 mm (clinical 5 mm T2*-GRE; partial volume makes a small microbleed faint), in-plane
  size and coverage kept. Drawn from a stream of its own, so a scan whose slices are not redrawn is
  exactly the scan drawn without this ingredient (a redrawn one is a new draw: its grid changes what
  follows).
* ``cmb_size``: microbleed sizes over the whole clinical range: half the microbleeds take a diameter
  drawn log-uniformly in 2-10 mm (the base law puts 96 % under ~6 mm, so large microbleeds were rare in
  training, and stage 2 took them for iron or other mimics). Drawn from a stream of its own (revision 3).
* ``dipole_bloom``: how a deposit blooms on a scanner rather than a drawn profile: for half the
  microbleeds and calcifications the dark spot is the intravoxel dephasing of the deposit's dipole field
  (`cmbdet.phantom.render.render_dipole_bloom`): ~1.2x longer along B0 than across it, signal kept on
  the magic-angle cones, larger on bigger voxels and thicker slices, the deposit itself 25-60 % of the
  spot's diameter. Calcifications (diamagnetic) bloom the same way in magnitude, so the shape of the
  bloom cannot tell them from microbleeds. Drawn from a stream of its own (revision 4).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import fft, ndimage

from .protocol import Protocol

INGREDIENTS = ("tissue", "vessels", "cmb_profile", "noise", "swi_mask", "resolution", "cmb_size", "dipole_bloom")


@dataclass(frozen=True)
class Randomization:
    """Which ingredients of domain randomization are on (see the module docstring)."""

    tissue: bool = True
    vessels: bool = True
    cmb_profile: bool = True
    noise: bool = True
    swi_mask: bool = True
    resolution: bool = True
    cmb_size: bool = True
    dipole_bloom: bool = True

    @classmethod
    def without(cls, names: list[str] | tuple[str, ...]) -> Randomization:
        unknown = sorted(set(names) - set(INGREDIENTS))
        if unknown:
            raise ValueError(f"unknown randomization ingredient(s) {unknown}; known: {', '.join(INGREDIENTS)}")
        return cls(**{f.name: f.name not in names for f in fields(cls)})

    def as_row(self) -> dict[str, int]:
        return {f"dr_{f.name}": int(getattr(self, f.name)) for f in fields(self)}


#: Share of microbleeds whose diameter is drawn over the whole range, and that range (mm).
WIDE_CMB_SHARE = 0.5
WIDE_CMB_DIAMETER_MM = (2.0, 10.0)


def randomize_cmb_diameter(diameter_mm: float, rng: np.random.Generator) -> float:
    """``diameter_mm`` (the base law's draw) or, for `WIDE_CMB_SHARE` of microbleeds, a diameter drawn
    log-uniformly over `WIDE_CMB_DIAMETER_MM`."""
    if rng.random() >= WIDE_CMB_SHARE:
        return diameter_mm
    lo, hi = np.log(WIDE_CMB_DIAMETER_MM)
    return float(np.exp(rng.uniform(lo, hi)))


#: Share of microbleeds (and calcifications) rendered by dipole dephasing under `dipole_bloom`, the
#: deposit's radius as a fraction of the spot's, and the spread of the blooming (the reference voxel
#: size at which the nominal diameter is the half-signal contour, relative to the scan's in-plane size).
DIPOLE_BLOOM_SHARE = 0.5
DIPOLE_CORE_FRACTION = (0.25, 0.6)
DIPOLE_REFERENCE_SCALE = (0.8, 1.25)


def dipole_bloom_shape(rng: np.random.Generator, core_depth: float, inplane_mm: float) -> dict:
    """Keyword arguments of `render_dipole_bloom` for one deposit (besides where and how large)."""
    return {"core_fraction": float(rng.uniform(*DIPOLE_CORE_FRACTION)), "core_depth": core_depth,
            "reference_voxel_mm": inplane_mm * float(rng.uniform(*DIPOLE_REFERENCE_SCALE))}


#: Share of randomized scans whose slices are redrawn, and the range (mm) they are drawn from.
THICK_SLICE_SHARE = 0.4
THICK_SLICE_MM = (4.0, 6.0)


def randomize_slices(protocol: Protocol, rng: np.random.Generator) -> Protocol:
    """``protocol``, or (with probability `THICK_SLICE_SHARE`) the same acquisition with slices of
    `THICK_SLICE_MM` (0.1 mm steps), in-plane size and slab coverage kept."""
    if rng.random() >= THICK_SLICE_SHARE:
        return protocol
    return protocol.with_slice_mm(round(float(rng.uniform(*THICK_SLICE_MM)), 1))


@dataclass(frozen=True)
class VesselStyle:
    """How one subject's small veins look (1.0 everywhere = the classic family)."""

    calibre: float = 1.0
    density: float = 1.0
    contrast: float = 1.0
    tortuosity_mm: float = 0.0  # amplitude of smooth wiggles added to small veins
    n_tortuous: int = 0  # extra thin tortuous veins


def sample_vessel_style(rng: np.random.Generator) -> VesselStyle:
    return VesselStyle(
        calibre=float(np.exp(rng.uniform(np.log(0.5), np.log(1.8)))),
        density=float(rng.uniform(0.6, 2.0)),
        contrast=float(rng.uniform(0.6, 1.3)),
        tortuosity_mm=float(rng.uniform(0.3, 3.0)),
        n_tortuous=int(rng.integers(60, 260)),
    )


def wiggle(points: np.ndarray, amplitude_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Resample a polyline at 1 mm and add a smooth random displacement across it (tortuosity)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] < 2.0 or amplitude_mm <= 0:
        return points
    t = np.linspace(0.0, s[-1], max(3, int(s[-1]) + 1))
    line = np.stack([np.interp(t, s, points[:, a]) for a in range(3)], axis=1)
    wavelength = rng.uniform(4.0, 15.0)
    offsets = np.zeros_like(line)
    for _ in range(2):
        direction = rng.normal(size=3)
        phase = rng.uniform(0, 2 * np.pi)
        offsets += np.sin(2 * np.pi * t / wavelength + phase)[:, None] * direction / np.linalg.norm(direction)
        wavelength *= rng.uniform(0.5, 0.8)
    taper = np.sqrt(np.clip(np.sin(np.pi * t / t[-1]), 0.0, None))  # ends stay where the vein connects
    return line + amplitude_mm * 0.7 * offsets * taper[:, None]


def tortuous_vein(start: np.ndarray, rng: np.random.Generator, length_mm: float) -> np.ndarray:
    """(n, 3) a thin vein as a persistent random walk in 1 mm steps (mm)."""
    n = max(4, int(length_mm))
    heading = rng.normal(size=3)
    heading /= np.linalg.norm(heading)
    turn = rng.uniform(0.15, 0.6)
    pts = [np.asarray(start, float)]
    for _ in range(n - 1):
        heading = heading + rng.normal(0, turn, 3)
        heading /= np.linalg.norm(heading)
        pts.append(pts[-1] + heading)
    return np.array(pts)


def randomize_tissue(anat, rng: np.random.Generator):
    """Per-tissue intensities and textures drawn wide (see the module docstring)."""
    i_gm = float(rng.uniform(0.45, 0.95))
    return replace(
        anat,
        i_gm=i_gm,
        i_wm=float(i_gm * rng.uniform(0.6, 1.15)),
        i_csf=float(rng.uniform(0.55, 1.1)),
        iron={k: float(np.clip(v * rng.uniform(0.3, 2.0), 0.0, 0.85)) for k, v in anat.iron.items()},
        tissue_noise=float(rng.uniform(0.01, 0.1)),
        diploe=float(rng.uniform(0.05, 0.6)),
        fat=float(rng.uniform(0.4, 1.0)),
    )


@dataclass(frozen=True)
class CmbProfile:
    depth: float
    sharp: float
    axes: np.ndarray
    halo_depth: float
    lumps: int


def sample_cmb_profile(rng: np.random.Generator, bloom: float) -> CmbProfile:
    axes = np.array([1.0, rng.uniform(1.0, 1.7), rng.uniform(0.7, 1.2)])
    return CmbProfile(
        depth=float(rng.uniform(0.45, 0.99)),
        sharp=float(rng.uniform(1.8, 10.0) / bloom),
        axes=axes / np.prod(axes) ** (1 / 3),
        halo_depth=float(rng.uniform(0.05, 0.3)) if rng.random() < 0.35 else 0.0,
        lumps=int(rng.integers(1, 4)) if rng.random() < 0.3 else 0,
    )


def multicoil_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Noncentral-chi magnitude of ``n`` coils (sum of squares) with a smooth g-factor map."""
    n_coils = int(rng.choice([1, 2, 4, 8]))
    shape = img.shape
    coarse = rng.uniform(0, 1, size=(4, 4, 3)).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    gmap = 1.0 + rng.uniform(0.0, 1.5) * ndimage.zoom(coarse, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    gmap = np.pad(gmap, [(0, s - g) for s, g in zip(shape, gmap.shape)], mode="edge")
    local = (sigma / np.sqrt(n_coils)) * gmap / float(gmap.mean())
    total = np.zeros(shape, np.float32)
    per_coil = img / np.float32(np.sqrt(n_coils))
    for _ in range(n_coils):
        re = per_coil + local * rng.standard_normal(shape, dtype=np.float32)
        im = local * rng.standard_normal(shape, dtype=np.float32)
        total += re * re + im * im
    return np.sqrt(total, out=total)


def swi_phase_mask(rng: np.random.Generator, magnitude: np.ndarray, susceptibility: np.ndarray,
                   spacing_mm: np.ndarray, b0_grid: np.ndarray) -> np.ndarray:
    """SWI processing on a magnitude image: the field of ``susceptibility`` (arbitrary units, >0 =
    paramagnetic, e.g. veins and microbleeds) convolved with the dipole kernel along ``b0_grid`` (unit
    vector in grid axes), high-pass filtered (homodyne-like), turned into a negative phase mask and
    multiplied in 2-5 times."""
    shape = susceptibility.shape
    k = np.meshgrid(*[fft.fftfreq(n, d=float(s)) for n, s in zip(shape, spacing_mm)], indexing="ij", sparse=True)
    kb = sum(ki * float(b) for ki, b in zip(k, b0_grid))
    k2 = sum(ki**2 for ki in k)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = (1.0 / 3.0 - kb**2 / k2).astype(np.float32)
    kernel[0, 0, 0] = 0.0
    field = fft.ifftn(fft.fftn(susceptibility.astype(np.complex64), workers=2) * kernel, workers=2).real
    field = field - ndimage.gaussian_filter(field, sigma=6.0 / np.asarray(spacing_mm))
    phase = -np.pi * float(rng.uniform(0.6, 1.6)) * field / max(float(np.percentile(np.abs(field), 99.9)), 1e-6)
    mask = np.where(phase < 0, np.clip(1.0 + phase / np.pi, 0.0, 1.0), 1.0).astype(np.float32)
    return magnitude * mask ** int(rng.integers(2, 6))
