#!/usr/bin/env python
"""Does the expansion model's deep feature survive a change of scanner? Its re-acquisition ICC, measured
the way training measures the radiomics before the LASSO may use them (`cmbdet.classify.robustness`).

    python tools/deep_feature_icc.py --data DATA/exp_train_cta [--weights W.safetensors] [--n 60]

For the subjects of a CT phantom set that training re-measures (`cmbdet.classify.samples.remeasured`),
each hematoma found by the shipped CT localizer is cut out on a 1 mm grid (its box plus 45 mm, enough
for the 80 mm crop), re-acquired once by `perturb_acquisition` (slice 1-5 mm on a random axis, 0.5-1.5 mm
pixels, kernel, noise, calibration, mask +-1 voxel), and the crop the CNN reads is made again from it
(`expansion_crop`). Prints the ICC(1,1) and Pearson r of the CNN's deep feature (the ensemble's mean
logit) between the crops of the native scans and those of the re-acquisitions, and against
``ROBUST_ICC``, the bar a radiomics feature must reach.
"""

from __future__ import annotations

import argparse

import numpy as np

from cmbdet.classify.features import crop_1mm, expansion_crop
from cmbdet.classify.model import load_classifier
from cmbdet.classify.robustness import ROBUST_ICC, intraclass_correlation, perturb_acquisition
from cmbdet.classify.samples import _name_number, localize, phantom_subjects, remeasured
from cmbdet.lesions.infer import SHIPPED_CT, load_lesion_model
from cmbdet.weights import shipped_weights

#: Margin (mm) of the 1 mm cut-out around the hematoma's box: the crop reaches 40 mm from its centre.
CUTOUT_MARGIN_MM = 45.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a CT phantom set (cmbdet phantom --kind ct --pairs)")
    parser.add_argument("--weights", help="expansion classifier weights (default: the shipped ones)")
    parser.add_argument("--n", type=int, default=60, help="re-measured subjects to use (default 60)")
    args = parser.parse_args(argv)
    model = load_classifier("expansion", args.weights)
    localizer = load_lesion_model(shipped_weights(SHIPPED_CT))
    subjects = [s for s in phantom_subjects(args.data, "expansion") if remeasured(s.subject)][: args.n]
    native, reacquired = [], []
    for subject in subjects:
        lesions, reference, arrays = localize(subject, localizer, None)
        rng = np.random.default_rng(_name_number(subject.subject))
        for n in range(1, len(lesions) + 1):
            mask = lesions.labels == n
            if not mask.any():
                continue
            native.append(expansion_crop(arrays["ct"], mask, reference.spacing_mm))
            image, roi = crop_1mm(arrays["ct"], mask, reference.spacing_mm, margin_mm=CUTOUT_MARGIN_MM)
            image, perturbed_roi = perturb_acquisition(rng, image, roi)
            reacquired.append(expansion_crop(image, perturbed_roi if perturbed_roi.any() else roi, np.ones(3)))
    if len(native) < 3:
        parser.error(f"only {len(native)} hematomas found in the re-measured subjects of {args.data}")
    deep = np.stack([model.cnn_logits(np.stack(native)), model.cnn_logits(np.stack(reacquired))])
    icc = float(intraclass_correlation(deep[:, :, None])[0])
    r = float(np.corrcoef(deep[0], deep[1])[0, 1])
    print(f"{len(subjects)} re-measured subjects, {deep.shape[1]} hematomas; weights: {args.weights or 'shipped'}")
    print(f"deep feature, native vs re-acquired crop: ICC(1,1) {icc:.3f}, Pearson r {r:.3f}; "
          f"{'passes' if icc >= ROBUST_ICC else 'fails'} the radiomics bar (ICC >= {ROBUST_ICC})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
