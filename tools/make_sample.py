#!/usr/bin/env python
"""Writes the sample scan that ships in data/: one phantom SWI (0.9 x 0.9 x 2 mm, LPS, 10 degrees
oblique, int16, the whole brain in the field of view) with 6 microbleeds, and its truth.

    python tools/make_sample.py            # -> data/sample_swi.nii.gz, data/sample_truth.csv
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmbdet.outputs import write_csv_atomic
from cmbdet.phantom.generate import make_subject, truth_rows
from cmbdet.phantom.protocol import Protocol
from cmbdet.volume import save_image_atomic

DATA = Path(__file__).resolve().parents[1] / "data"


def main() -> None:
    protocol = Protocol(voxel_mm=(0.9, 0.9, 2.0), axcodes=("L", "P", "S"), oblique_deg=10.0, contrast="swi",
                        shape=(224, 256, 72), field_t=3.0, te_ms=20.0, snr=22.0, dtype="int16",
                        max_value=4095.0, oblique_axis=(1.0, 0.0, 0.0), bias=0.2, coverage_top_mm=98.0,
                        name="sample_swi_0.9x2")
    subject = make_subject(np.random.default_rng([2026, 11]), subject="sample_swi", protocol=protocol, n_cmb=6)
    save_image_atomic(subject.image, DATA / "sample_swi.nii.gz")
    write_csv_atomic(DATA / "sample_truth.csv", truth_rows(subject),
                     ("subject", "x_mm", "y_mm", "z_mm", "diameter_mm", "region"))
    print(f"wrote {DATA / 'sample_swi.nii.gz'} with {len(subject.cmbs)} CMBs")


if __name__ == "__main__":
    main()
