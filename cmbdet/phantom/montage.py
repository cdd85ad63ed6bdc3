"""Axial slice montages of a phantom with the truth circled (review pictures)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from cmbdet.atomic import atomic_path


def _axial_stack(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """RAS-canonical (voxel axes reordered/flipped, not resampled) data + affine."""
    can = nib.as_closest_canonical(image)
    return np.asanyarray(can.dataobj).astype(np.float32) * _slope(can), can.affine


def _slope(img: nib.Nifti1Image) -> float:
    s, _ = img.header.get_slope_inter()
    return 1.0 if s is None or not np.isfinite(s) else float(s)


def render_montage(
    image: nib.Nifti1Image,
    cmbs: list[dict],
    path: str | os.PathLike,
    *,
    mimics: list[dict] | None = None,
    title: str = "",
    n_panels: int = 16,
) -> None:
    """Write a PNG montage of axial slices (radiological: patient right on screen left).

    Slices through each CMB come first (up to ``n_panels``), the rest evenly
    spaced. Truth CMBs are circled red (solid on their centre slice, dashed on
    neighbouring slices); mimic sample points, if given, are small cyan
    (veins), yellow (iron), orange (air-bone) or magenta (calcification) marks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    data, aff = _axial_stack(image)
    inv = np.linalg.inv(aff)
    vx = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    nz = data.shape[2]
    fg = data[data > np.percentile(data, 60)]
    lo, hi = np.percentile(fg, [1, 99.5]) if fg.size else (0.0, 1.0)
    lo = 0.0

    def to_vox(items):
        if not items:
            return np.zeros((0, 3))
        xyz = np.array([[m["x_mm"], m["y_mm"], m["z_mm"]] for m in items], float)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    cv = to_vox(cmbs)
    mv = to_vox(mimics or [])
    ks = sorted({int(round(k)) for k in cv[:, 2] if 0 <= round(k) < nz})[:n_panels]
    rest = n_panels - len(ks)
    if rest > 0:
        cand = np.linspace(nz * 0.12, nz * 0.92, rest + 2)[1:-1].round().astype(int)
        ks = sorted(set(ks) | {int(k) for k in cand})
    ks = ks[:n_panels]
    ncol = 4
    nrow = int(np.ceil(len(ks) / ncol))
    aspect = data.shape[1] * vx[1] / (data.shape[0] * vx[0])
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 3.6, nrow * 3.6 * aspect + 0.6), squeeze=False)
    colours = {"vein": "cyan", "iron": "yellow", "air_bone": "orange", "calcification": "magenta"}
    for ax, k in zip(axes.ravel(), ks):
        sl = data[:, :, k].T  # rows = A-P (y), cols = R-L (x)
        # radiological: patient right on screen left -> x increases to the left
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=vx[1] / vx[0], interpolation="nearest")
        ax.invert_xaxis()
        for (i, j, kk), c in zip(cv, cmbs):
            dk = abs(kk - k)
            r_vox = c["diameter_mm"] / 2.0 / vx[0]
            if dk * vx[2] <= c["diameter_mm"] / 2.0 + 0.5 * vx[2]:
                ls = "-" if dk < 0.5 else "--"
                ax.add_patch(Circle((i, j), 1.8 * r_vox + 4, fill=False, ec="red", lw=1.0, ls=ls))
        for (i, j, kk), m in zip(mv, mimics or []):
            if abs(kk - k) < 0.5:
                ax.plot(i, j, marker="+", ms=4, mew=0.6, color=colours.get(m.get("kind"), "white"))
        ax.set_title(f"k={k}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(ks) :]:
        ax.axis("off")
    axc = "".join(nib.aff2axcodes(image.affine))
    zooms = "x".join(f"{z:.2f}" for z in image.header.get_zooms()[:3])
    fig.suptitle(
        f"{title}  {axc} {zooms} mm  n_cmb={len(cmbs)}  axial, RADIOLOGICAL (patient R = screen left); red = truth CMB",
        fontsize=8,
    )
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
