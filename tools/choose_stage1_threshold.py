#!/usr/bin/env python
"""Choose stage 1's stand-alone operating point (``cmbdet detect --no-reclassify``) on a validation family
and write it into a copy of the proposer weights.

    python tools/choose_stage1_threshold.py --proposer W.safetensors --val DATA/val-delta-s8101 -o OUT.safetensors

`cmbdet train proposer` chooses this threshold on its ``--val`` scans, or on scans held out at random from
its training sets; this tool chooses it again on a validation family (best lesion-level F1 with 30
candidates per scan, as training does), prints the figures, and stores them with the validation data's
description. The figures of the earlier choice are kept under ``earlier_operating_point``.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposer", required=True, help="stage-1 weights to read")
    parser.add_argument("--val", nargs="+", required=True, help="validation family folders (truth.csv beside)")
    parser.add_argument("-o", "--output", required=True, help="weights file to write (may be --proposer)")
    args = parser.parse_args(argv)

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.proposer.train import validate_proposer
    from cmbdet.training_data import describe_sources, read_labelled_set

    proposer = load_proposer(args.proposer)
    scans = [s for folder in args.val for s in read_labelled_set(folder)]
    report = validate_proposer(proposer, scans)
    earlier = {k: proposer.metadata[k] for k in (*report, "validation_data") if k in proposer.metadata}
    proposer.metadata.update(report, validation_data=describe_sources(args.val, scans, role="validation"),
                             earlier_operating_point=earlier)
    proposer.save(args.output)
    print(f"{len(scans)} validation scans, {sum(len(s.cmb_xyz_mm) for s in scans)} CMBs: recall with "
          f"{report['max_candidates']} candidates {report['val_recall_at_max_candidates']:.3f}; stage-1-alone "
          f"threshold {report['threshold']:.3f} (was {earlier.get('threshold')}): sensitivity "
          f"{report['val_sensitivity']:.3f}, {report['val_fp_per_subject']:.2f} FP/subject, F1 {report['val_f1']:.3f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
