"""`cmbdet` command line: a thin layer over the Python API (`main(argv=None)` for tests)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cmbdet import __version__
from cmbdet.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        if args.debug:
            raise
        print(f"cmbdet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmbdet: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"cmbdet: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cmbdet: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    from cmbdet.reclassifier.patches import FOV_MM
    # --debug works before or after the command; SUPPRESS keeps a subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="cmbdet",
        description="Cerebral microbleed detection in SWI / T2*-GRE MRI (3D CNN candidates + YOLO reclassifier).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"cmbdet {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("detect", parents=[common], help="find microbleeds in scans",
                       description="Find microbleeds in SWI / T2*-GRE scans with the shipped (or given) weights.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".nii/.nii.gz files, folders (searched recursively) or text files listing paths")
    p.add_argument("-o", "--outdir", default="cmbdet_out", help="output folder (default: cmbdet_out)")
    p.add_argument("--weights", help="weights folder (default: the shipped weights/)")
    p.add_argument("--no-reclassify", action="store_true", help="run stage 1 (3D CNN) alone")
    p.add_argument("--threshold", type=float,
                   help="final score threshold in [0, 1] (default: the operating point stored with the weights; "
                        "0 keeps every candidate, for an FROC)")
    p.add_argument("--echo", default="rss",
                   help="multi-echo 4-D input: rss (root-sum-of-squares, default), first, last or a 0-based index")
    p.add_argument("--no-pictures", action="store_true", help="skip the review PNGs (faster)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: CUDA when present)")
    p.set_defaults(run=_detect)

    p = sub.add_parser("phantom", parents=[common], help="write realistic synthetic scans with known CMBs",
                       description="Write synthetic SWI/GRE scans with ground truth (truth.csv, scanner RAS mm).")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("-n", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="coarse, fast volumes (for tests)")
    p.add_argument("--no-montage", action="store_true", help="skip the slice montages")
    p.add_argument("--kind", choices=("cmb", "ct", "mri-hemorrhage"), default="cmb",
                   help="cmb: SWI/GRE with microbleeds (default); ct: head CT in HU with hematomas; "
                        "mri-hemorrhage: multi-sequence MRI with hematomas and hemorrhagic metastases")
    p.add_argument("--family", help="hemorrhage phantom family (ct: ct-a training, ct-b held out; "
                                    "mri-hemorrhage: see cmbdet.phantom.hemorrhage_mri)")
    p.add_argument("--pairs", action="store_true", help="ct: also write a follow-up scan with known growth")
    p.set_defaults(run=_phantom)

    p = sub.add_parser("lesions", parents=[common], help="localize hemorrhagic lesions on CT or MRI",
                       description="Localize hemorrhagic lesions (hematomas, hemorrhagic metastases) on non-contrast "
                                   "head CT (HU) or one subject's MRI sequences; writes lesions.csv, counts.csv, "
                                   "a label map in the input's grid, a JSON sidecar and a review PNG per subject.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".nii/.nii.gz files, folders (a folder per subject for MRI) or text files listing paths; "
                        "MRI files are grouped by their BIDS sub-/ses- entities")
    p.add_argument("-o", "--outdir", default="cmbdet_lesions", help="output folder (default: cmbdet_lesions)")
    p.add_argument("--modality", choices=("auto", "ct", "mri"), default="auto",
                   help="auto (default) decides per file from its values (a CT in HU has air near -1000)")
    p.add_argument("--crops", action="store_true",
                   help="write per-lesion crops of every sequence and mask (box + 10 mm) and the 5 axial 1 mm "
                        "slices around the largest cross-section (for cmbdet classify)")
    p.add_argument("--weights", help="CT lesion weights file (default: the shipped weights/lesions_ct.safetensors)")
    p.add_argument("--mri-weights", help="MRI lesion weights file (default: the shipped one when present)")
    p.add_argument("--classical", action="store_true",
                   help="use the classical peer (density/signal threshold + components) instead of the network")
    p.add_argument("--no-pictures", action="store_true", help="skip the review PNGs")
    p.add_argument("--device", help="torch device (default: CUDA when present)")
    p.set_defaults(run=_lesions)

    p = sub.add_parser("evaluate", parents=[common], help="score detections against a reference",
                       description="Lesion-level scoring (VALDO style): sensitivity, precision, F1, FP/subject, FROC.")
    p.add_argument("--truth", required=True, help="truth.csv (subject, x_mm, y_mm, z_mm, diameter_mm, region)")
    p.add_argument("--detections", required=True, help="detections.csv from cmbdet detect")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--per-subject", metavar="CSV", help="also write per-subject figures to this CSV")
    p.add_argument("--score-threshold", type=float, default=0.0, help="ignore detections below this score")
    p.add_argument("--min-distance-mm", type=float, default=5.0, help="minimum match distance (mm)")
    p.add_argument("--margin-mm", type=float, default=2.0, help="match distance = max(min, radius + margin)")
    p.set_defaults(run=_evaluate)

    train = sub.add_parser("train", parents=[common], help="train a stage on labelled scans")
    train_sub = train.add_subparsers(title="stages", metavar="STAGE")
    p = train_sub.add_parser("proposer", parents=[common], help="train the stage-1 3D CNN",
                             description="Train the stage-1 proposer on a phantom/data folder or a manifest.")
    p.add_argument("--data", required=True, nargs="+",
                   help="folder(s) with scans + truth.csv (+ mimics.csv), or manifest CSV(s) (subject,image)")
    p.add_argument("--truth", help="truth CSV for a manifest (default: truth.csv beside it)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--spacing-mm", type=float, default=1.0, help="working grid of the network (mm, isotropic)")
    p.add_argument("--init", help="start from these proposer weights (fine-tuning, e.g. the shipped ones on "
                                  "your data); their width and working grid are kept")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="scans held out to measure recall and choose the stage-1-alone threshold")
    p.add_argument("--val", nargs="+", metavar="DATA",
                   help="separate labelled folder(s)/manifest(s) for validation instead of holding out "
                        "--val-fraction of --data (all of --data is then trained on); a manifest needs "
                        "truth.csv beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(run=_train_proposer)

    p = train_sub.add_parser("reclassifier", parents=[common], help="train the stage-2 YOLO classifier",
                             description="Mine stage-1 candidates on labelled scans and train the stage-2 "
                                         "YOLO classifier (ultralytics, offline) on their 2.5-D patches.")
    p.add_argument("--data", required=True, nargs="+", help="folder(s) or manifest CSV(s), as for the proposer")
    p.add_argument("--truth", help="truth CSV for a manifest (default: truth.csv beside it)")
    p.add_argument("--proposer", help="stage-1 weights used to mine candidates (default: the shipped one)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val", nargs="+", metavar="DATA",
                   help="separate labelled folder(s)/manifest(s) to validate on and choose the operating point "
                        "(default: 15%% of --data's subjects, held out); a manifest needs truth.csv beside it")
    p.add_argument("--fov-mm", type=float, default=FOV_MM,
                   help=f"side of the patch planes around each candidate, mm (default {FOV_MM:g}; 64 pixels; "
                        "stored in the weights and used at inference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the patch images and ultralytics run here (default: a temp folder)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_train_reclassifier)
    return parser


def _detect(args) -> int:
    from cmbdet.pipeline import detect_batch, expand_inputs, load_detector

    scans = expand_inputs(args.inputs)
    if not scans:
        raise InputError(None, "no input scans found")
    detector = load_detector(args.weights, reclassify=not args.no_reclassify, threshold=args.threshold,
                             device=args.device)
    stages = "stage 1 + stage 2" if detector.reclassifier is not None else "stage 1 only"
    print(f"cmbdet {__version__}: {len(scans)} scan(s), {stages}, threshold {detector.threshold:.2f}",
          file=sys.stderr)

    def progress(index: int, total: int, result) -> None:
        what = f"{result.n_cmb} CMB" if result.status == "ok" else f"ERROR: {result.message}"
        print(f"[{index}/{total}] {result.subject}: {what} ({result.seconds:.1f} s)", file=sys.stderr)

    results = detect_batch(detector, scans, args.outdir, echo=args.echo, pictures=not args.no_pictures,
                           progress=progress)
    width = max(len("subject"), *(len(r.subject) for r in results))
    print(f"{'subject':<{width}}  {'status':<6} {'n_cmb':>5} {'lobar':>5} {'deep':>5} {'infra':>5}")
    for r in results:
        c = r.counts
        print(f"{r.subject:<{width}}  {r.status:<6} {c.get('n_cmb', ''):>5} {c.get('n_lobar', ''):>5} "
              f"{c.get('n_deep', ''):>5} {c.get('n_infratentorial', ''):>5}")
    failed = sum(r.status != "ok" for r in results)
    print(f"wrote {Path(args.outdir) / 'detections.csv'} and counts.csv; {len(results) - failed} ok, {failed} failed",
          file=sys.stderr)
    return 1 if failed else 0


def _phantom(args) -> int:
    from cmbdet.phantom import write_phantom_set

    if args.n < 1:
        raise InputError(None, "-n must be at least 1")
    if getattr(args, "kind", "cmb") != "cmb":
        return _phantom_hemorrhage(args)
    truth = write_phantom_set(args.outdir, args.n, args.seed, tiny=args.tiny, montage=not args.no_montage)
    print(f"wrote {args.n} phantom scan(s) and {truth}", file=sys.stderr)
    return 0


def _phantom_hemorrhage(args) -> int:
    if args.kind == "ct":
        from cmbdet.phantom.ct import FAMILIES, write_ct_set

        family = args.family if args.family in FAMILIES else "ct-a"
        if args.family and args.family not in FAMILIES and args.family != "classic":
            raise InputError(None, f"unknown CT phantom family {args.family!r} (choose {', '.join(FAMILIES)})")
        truth = write_ct_set(args.outdir, args.n, args.seed, family=family, fast=args.tiny, pairs=args.pairs)
    else:
        from cmbdet.phantom.hemorrhage_mri import SITES, write_mri_set

        site = args.family if args.family in SITES else next(iter(SITES))
        if args.family and args.family not in SITES and args.family != "classic":
            raise InputError(None, f"unknown MRI hemorrhage site {args.family!r} (choose {', '.join(SITES)})")
        truth = write_mri_set(args.outdir, args.n, args.seed, site=site, fast=args.tiny)
    print(f"wrote {args.n} {args.kind} phantom subject(s) of family {family if args.kind == 'ct' else site} and "
          f"{truth}", file=sys.stderr)
    return 0


def _lesions(args) -> int:
    from cmbdet.lesions.infer import load_lesion_model
    from cmbdet.lesions.run import lesions_batch, plan_inputs

    units = plan_inputs(args.inputs, args.modality)
    if not units:
        raise InputError(None, "no input scans found")
    ct_model = mri_model = None
    if not args.classical:
        if any(u.modality == "ct" for u in units):
            ct_model = load_lesion_model(args.weights, device=args.device)
        if any(u.modality == "mri" for u in units):
            from cmbdet.weights import SHIPPED_WEIGHTS_DIR

            shipped = SHIPPED_WEIGHTS_DIR / "lesions_mri.safetensors"
            path = args.mri_weights or (shipped if shipped.exists() else None)
            mri_model = load_lesion_model(path, device=args.device) if path else None
    method = "classical peer" if args.classical else "network"
    print(f"cmbdet {__version__} lesions: {len(units)} input(s), {method}", file=sys.stderr)

    def progress(index: int, total: int, result) -> None:
        what = (f"{result.modality}: {result.n_lesions} lesion(s), {result.total_volume_ml:.1f} mL"
                if result.status == "ok" else f"ERROR: {result.message}")
        print(f"[{index}/{total}] {result.subject}: {what} ({result.seconds:.1f} s)", file=sys.stderr)
        if result.status == "ok" and result.message.startswith("modality auto"):
            print(f"    {result.message.split(';')[0]}", file=sys.stderr)

    results = lesions_batch(units, args.outdir, ct_model=ct_model, mri_model=mri_model, classical=args.classical,
                            pictures=not args.no_pictures, crops=args.crops, progress=progress)
    failed = sum(r.status != "ok" for r in results)
    print(f"wrote {Path(args.outdir) / 'lesions.csv'} and counts.csv; {len(results) - failed} ok, {failed} failed",
          file=sys.stderr)
    return 1 if failed else 0


def _evaluate(args) -> int:
    from cmbdet.evaluate import evaluate, read_detections, read_truth, write_per_subject_csv

    result = evaluate(read_truth(args.truth), read_detections(args.detections),
                      score_threshold=args.score_threshold, min_distance_mm=args.min_distance_mm,
                      margin_mm=args.margin_mm)
    if args.json:
        print(result.to_json())
        for message in result.warnings:
            print(f"cmbdet: warning: {message}", file=sys.stderr)
    else:
        print(result.summary_text())
    if args.per_subject:
        write_per_subject_csv(result, args.per_subject)
    return 0


def _train_proposer(args) -> int:
    import numpy as np

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.proposer.train import prepare_scans, train_proposer, validate_proposer
    from cmbdet.training_data import hold_out, read_labelled_set

    scans = [s for source in args.data for s in read_labelled_set(source, args.truth)]
    rng = np.random.default_rng(args.seed)
    if args.val:
        train, val = scans, [s for source in args.val for s in read_labelled_set(source)]
    else:
        train, val = hold_out(scans, args.val_fraction, rng)
    print(f"preparing {len(train)} training scans ({len(val)} held out for validation) ...", file=sys.stderr)
    init = load_proposer(args.init, device=args.device) if args.init else None
    spacing_mm = init.spacing_mm if init is not None else args.spacing_mm
    prepared = prepare_scans(train, spacing_mm)
    proposer = train_proposer(prepared, rng, steps=args.steps, batch_size=args.batch_size, device=args.device,
                              spacing_mm=spacing_mm, lr=args.lr, init=init,
                              log=lambda line: print(line, file=sys.stderr))
    proposer.metadata.update(seed=args.seed, data=[str(d) for d in args.data],
                             val_data=[str(d) for d in args.val or []])
    if val:
        report = validate_proposer(proposer, val)
        proposer.metadata.update(report)
        print("validation: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in report.items()), file=sys.stderr)
    proposer.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _train_reclassifier(args) -> int:
    import numpy as np

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.reclassifier.train import train_reclassifier
    from cmbdet.training_data import read_labelled_set

    scans = [s for source in args.data for s in read_labelled_set(source, args.truth)]
    proposer = load_proposer(args.proposer)
    rng = np.random.default_rng(args.seed)
    val = [s for source in args.val for s in read_labelled_set(source)] if args.val else None
    reclassifier = train_reclassifier(scans, proposer, rng, val_scans=val, epochs=args.epochs,
                                      batch=args.batch_size, fov_mm=args.fov_mm, device=args.device,
                                      workdir=Path(args.workdir) if args.workdir else None,
                                      log=lambda line: print(line, file=sys.stderr))
    reclassifier.metadata.update(seed=args.seed, data=[str(d) for d in args.data],
                                 val_data=[str(d) for d in args.val or []])
    reclassifier.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
