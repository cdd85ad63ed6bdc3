"""Measure the "beta" family: generation time, CMB and mimic counts, protocols; optional picture.

Run ``python -m cmbdet.phantom.beta.benchmark --n 6 --seed 100 --png /tmp/beta.png``.
The MNI maps are loaded (and cached) before timing starts, so times are per subject.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _picture(subjects: list, path: str) -> None:
    """Axial slices (through a CMB when there is one) of up to two subjects, RAS display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    fig, axes = plt.subplots(1, len(subjects), figsize=(9 * len(subjects), 10), squeeze=False)
    for ax, s in zip(axes[0], subjects):
        img = nib.as_closest_canonical(s.image)
        data = img.get_fdata()
        inv = np.linalg.inv(img.affine)
        pts = [nib.affines.apply_affine(inv, [c["x_mm"], c["y_mm"], c["z_mm"]]) for c in s.cmbs]
        k = int(round(pts[0][2])) if pts else int(0.6 * data.shape[2])
        ax.imshow(data[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(data, 99.5))
        zoom = img.header.get_zooms()[0]
        for p, c in zip(pts, s.cmbs):
            if abs(p[2] - k) < 1.0:
                ax.add_patch(plt.Circle((p[0], p[1]), 2.0 * c["diameter_mm"] / zoom, fill=False, color="r"))
        for m in s.mimics:
            p = nib.affines.apply_affine(inv, [m["x_mm"], m["y_mm"], m["z_mm"]])
            if m["kind"] == "vein" and abs(p[2] - k) < 1.0:
                ax.add_patch(plt.Circle((p[0], p[1]), 6.0 / zoom, fill=False, color="c"))
        pr = s.protocol
        ax.set_title(f"{s.subject}: {pr.sequence} {pr.field_t} T TE {pr.te_ms} ms, voxel {pr.voxel_mm} mm, "
                     f"{pr.axcodes}, slice {k}, {len(s.cmbs)} CMB (red), steep veins (cyan)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    from cmbdet.anatomy import mni_maps

    from . import make_subject

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--png", default=None, help="save axial slices of the first two subjects here")
    args = ap.parse_args(argv)
    mni_maps(1)
    mni_maps(2)
    subjects, times, cpu = [], [], []
    for i in range(args.n):
        t, c = time.perf_counter(), time.process_time()
        s = make_subject(np.random.default_rng(args.seed + i), subject=f"beta-{args.seed + i:04d}", tiny=args.tiny)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        subjects.append(s)
        p = s.protocol
        kinds = [m["kind"] for m in s.mimics]
        print(f"{s.subject}: {times[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU  shape {s.image.shape} {p.axcodes} "
              f"{p.sequence} {p.field_t} T "
              f"voxel {p.voxel_mm} {p.storage}  CMB {len(s.cmbs)} "
              f"({', '.join(sorted({c['region'] for c in s.cmbs}))})  "
              f"mimics vein {kinds.count('vein')} iron {kinds.count('iron')} air_bone {kinds.count('air_bone')} "
              f"calc {kinds.count('calcification')}")
    counts = [len(s.cmbs) for s in subjects]
    print(f"mean generation time {np.mean(times):.2f} s wall (max {np.max(times):.2f} s), "
          f"{np.mean(cpu):.2f} s CPU (max {np.max(cpu):.2f} s) over {args.n} subjects")
    print(f"mean CMB count {np.mean(counts):.2f}; subjects without CMB {sum(c == 0 for c in counts)}")
    if args.png:
        _picture(subjects[:2], args.png)
        print(f"picture: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
