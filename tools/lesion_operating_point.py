"""Store an operating point (chosen on validation scans with tools/bench_lesions.py) in lesion weights.

    python tools/lesion_operating_point.py IN.safetensors OUT.safetensors --threshold 0.7 --min-ml 0.3 \
        --refine on --refine-mm 0 --max-dense 0.1 --note "chosen on the 4 ct-a validation scans"
"""

from __future__ import annotations

import argparse
import sys

from cmbdet.lesions.infer import load_lesion_model, set_operating_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--min-ml", type=float)
    parser.add_argument("--refine", choices=("on", "off"))
    parser.add_argument("--refine-mm", type=float, help="how far (mm) a redrawn margin may move out (0: one voxel)")
    parser.add_argument("--max-dense", type=float)
    parser.add_argument("--group-mm", type=float)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    model = set_operating_point(load_lesion_model(args.input), threshold=args.threshold, min_ml=args.min_ml,
                                refine=args.refine, refine_mm=args.refine_mm, max_dense=args.max_dense,
                                group_mm=args.group_mm)
    if args.note:
        model.metadata["operating_point_note"] = args.note
    model.save(args.output)
    print(f"wrote {args.output}: threshold {model.threshold:g}, min_ml {model.min_ml:g}, refine "
          f"{'on' if model.refine_hu else 'off'} ({model.refine_mm:g} mm), max_dense {model.max_dense_fraction:g}, "
          f"group_mm {model.group_mm:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
