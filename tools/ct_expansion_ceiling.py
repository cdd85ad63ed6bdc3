"""The hematoma-expansion generator's own ceiling: AUC of its expansion probability against the
labels it draws (the best any classifier of baseline CT can reach on these phantoms).

    python tools/ct_expansion_ceiling.py [--family ct-a] [--n 3000] [--seed 0]

Draws hematomas with the family's sampler (no image is rendered; baseline volume = the drawn target
volume) and growth with `cmbdet.phantom.ct.lesion.draw_growth`; prints the expansion rate and AUC.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from cmbdet.anatomy import mni_maps
from cmbdet.phantom.ct.generate import FAMILIES
from cmbdet.phantom.ct.head import sample_pose
from cmbdet.phantom.ct.lesion import draw_growth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="ct-a", choices=sorted(FAMILIES))
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    maps = mni_maps(1)
    family = FAMILIES[args.family]
    probs, labels = [], []
    while len(probs) < args.n:
        for h in family.sample_hematomas(rng, maps, sample_pose(rng), p_free=0.0):
            _, expands, p = draw_growth(rng, h.target_ml, h)
            probs.append(p)
            labels.append(expands)
    labels_arr = np.array(labels)
    print(f"{args.family}: {len(probs)} hematomas, expansion rate {labels_arr.mean():.3f}, "
          f"generator-probability AUC {roc_auc_score(labels_arr, probs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
