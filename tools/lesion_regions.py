#!/usr/bin/env python
"""Region and IVH of the true hematomas of a CT phantom set, as `cmbdet lesions` measures them.

For each scan of ``--data`` (a `cmbdet phantom --family ct-a|ct-b` output: ``*_ct.nii.gz``, their
``*_desc-truth_dseg.nii.gz`` label maps and truth.csv), the truth label map is measured exactly as a
found lesion would be (`cmbdet.lesions.result.measure_lesions`, with the CT brain mask of
`cmbdet.lesions.ct.ct_working_image`), so the figures are about the region anchor and the ventricle
look-up, not the localizer. Prints the share of hematomas given their true MARS region (overall and
per true region), and the IVH agreement.

    python tools/lesion_regions.py --data DIR [--n 40]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdet.lesions.ct import ct_working_image, load_ct_volume
from cmbdet.lesions.result import BLOOD_HU, measure_lesions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40, help="at most this many subjects with a hematoma")
    args = parser.parse_args(argv)
    with open(args.data / "truth.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["session"] == "baseline" and r["lesion_id"]]
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    regions, ivh, seconds = [], [], []
    for subject in sorted(by_subject)[: args.n]:
        volume = load_ct_volume(args.data / f"{subject}_ct.nii.gz")
        work = ct_working_image(volume)
        painted = volume.from_source_array(
            np.asarray(nib.load(args.data / f"{subject}_desc-truth_dseg.nii.gz").dataobj)).astype(int)
        truth = by_subject[subject]
        labels = np.zeros_like(painted)
        for index, row in enumerate(truth):
            labels[painted == int(row["lesion_id"])] = index + 1
        start = time.perf_counter()
        lesions = measure_lesions(volume, labels, np.ones(len(truth)), work.mask, work.affine, blood_hu=BLOOD_HU)
        seconds.append(time.perf_counter() - start)
        regions += [(str(lesions.region[i]), row["region"]) for i, row in enumerate(truth)]
        ivh += [(int(lesions.ivh[i]), int(row["ivh"])) for i, row in enumerate(truth)]
    got, want = np.array(regions).T
    found, true = np.array(ivh).T
    per_region = ", ".join(f"{r} {np.mean(got[want == r] == r):.2f} ({np.sum(want == r)})"
                           for r in ("lobar", "deep", "infratentorial") if np.any(want == r))
    print(f"{args.data.name}: {len(got)} hematomas in {len(seconds)} scans; region right {np.mean(got == want):.3f} "
          f"({per_region}; unknown {np.sum(got == 'unknown')}); ivh right {np.mean(found == true):.3f} "
          f"(true {int(true.sum())}, found {int(found.sum())}, both {int(np.sum((found == 1) & (true == 1)))}); "
          f"measuring {np.median(seconds):.1f} s/scan median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
