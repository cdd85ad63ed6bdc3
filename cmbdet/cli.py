"""`cmbdet` command line: a thin layer over the Python API (`main(argv=None)` for tests)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

from cmbdet import __version__
from cmbdet.errors import InputError
from cmbdet.weights import check_device


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    _keep_home_clean()
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        check_device(getattr(args, "device", None))
        return int(args.run(args) or 0)
    except InputError as err:
        if args.debug:
            raise
        print(f"cmbdet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmbdet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `cmbdet evaluate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if args.debug:
            raise
        print(f"cmbdet: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


def _keep_home_clean() -> None:
    """Point matplotlib's cache at a private folder in the temp dir (kept between runs, for its font
    list), so that a run writes nothing under the user's home. Ultralytics gets its own private
    config folder in `cmbdet.reclassifier.yolo`. A value the user set is kept."""
    import os
    import tempfile

    if "MPLCONFIGDIR" not in os.environ:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        folder = Path(tempfile.gettempdir()) / f"cmbdet-{uid}" / "matplotlib"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ["MPLCONFIGDIR"] = str(folder)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cmbdet: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    from cmbdet.reclassifier.patches import FOV_MM, LAYOUTS, SLAB_MM
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
                   help=".nii/.nii.gz files, folders (searched recursively), BIDS roots (SWI/T2starw/GRE/MEGRE/T2star "
                        "magnitude), text files listing paths, or a manifest CSV (subject, image or path, session)")
    p.add_argument("-o", "--outdir", default="cmbdet_out", help="output folder (default: cmbdet_out)")
    p.add_argument("--weights", help="weights folder (default: the shipped weights/)")
    p.add_argument("--no-reclassify", action="store_true", help="run stage 1 (3D CNN) alone")
    p.add_argument("--threshold", type=float,
                   help="final score threshold in [0, 1] (default: the operating point stored with the weights; "
                        "0 keeps every candidate, for an FROC)")
    p.add_argument("--echo", default="auto", type=_echo_choice,
                   help="multi-echo input (4-D, or one file per echo): auto (default: echoes weighted by echo time "
                        "for susceptibility contrast, TE from JSON sidecars), rss (root-sum-of-squares), first, "
                        "last or a 0-based index (0 = the first echo, echo-1 in BIDS)")
    p.add_argument("--no-pictures", action="store_true", help="skip the review PNGs (faster)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: CUDA when present)")
    _add_batch_options(p)
    p.set_defaults(run=_detect)

    p = sub.add_parser("rescore", parents=[common], help="apply another threshold to a finished detect run",
                       description="Rewrite detections.csv, counts.csv, label maps, markups, pictures and "
                                   "index.html of a detect output folder at another threshold, from the "
                                   "candidates kept per subject (no scans or models needed).")
    p.add_argument("outdir", metavar="OUTDIR", help="output folder of cmbdet detect")
    p.add_argument("--threshold", type=float, required=True, help="final score threshold in [0, 1]")
    p.set_defaults(run=_rescore)

    p = sub.add_parser("phantom", parents=[common], help="write realistic synthetic scans with known CMBs",
                       description="Write synthetic SWI/GRE scans with ground truth (truth.csv, scanner RAS mm).")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("-n", type=_COUNT, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="coarse, fast volumes (for tests)")
    p.add_argument("--no-montage", action="store_true", help="skip the slice montages")
    p.add_argument("--family", default="classic",
                   help="phantom family: for --kind cmb classic, randomized, beta (training), delta, epsilon "
                        "(validation), gamma (test), see the README's 'Phantom families'; for --kind ct ct-a "
                        "(training), ct-b (held out), ct-c (validation); for --kind mri-hemorrhage a site of "
                        "cmbdet.phantom.hemorrhage_mri")
    p.add_argument("--insert-into", metavar="SCAN",
                   help="instead of whole phantoms: -n copies of this real scan (3-D or multi-echo) with "
                        "--cmb-per-copy synthetic microbleeds each, plus one untouched copy, and truth.csv; "
                        "checks the detector on your own scanner's images")
    p.add_argument("--cmb-per-copy", type=_COUNT, help="microbleeds per copy with --insert-into (default 3)")
    p.add_argument("--without", default="",
                   help="randomized family only: comma-separated randomization ingredients to switch off "
                        "(tissue, vessels, cmb_profile, noise, swi_mask, resolution, cmb_size, dipole_bloom), "
                        "for ablations")
    p.add_argument("--kind", choices=("cmb", "ct", "mri-hemorrhage"), default="cmb",
                   help="cmb: SWI/GRE with microbleeds (default); ct: head CT in HU with hematomas; "
                        "mri-hemorrhage: multi-sequence MRI with hematomas and hemorrhagic metastases")
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
                   help="auto (default) decides per file: CT when BIDS-named _ct, or by its values (a CT in HU "
                        "has air near -1000 and bone above 300)")
    p.add_argument("--crops", action="store_true",
                   help="write per-lesion crops of every sequence and mask (box + 10 mm) and the 5 axial 1 mm "
                        "slices around the largest cross-section, for your own analyses (cmbdet classify reads "
                        "the label maps)")
    p.add_argument("--weights", help="CT lesion weights file (default: the shipped weights/lesions_ct.safetensors)")
    p.add_argument("--mri-weights", help="MRI lesion weights file (default: the shipped one when present)")
    p.add_argument("--classical", action="store_true",
                   help="use the classical peer (density/signal threshold + components) instead of the network")
    p.add_argument("--no-pictures", action="store_true", help="skip the review PNGs")
    p.add_argument("--device", help="torch device (default: CUDA when present)")
    _add_batch_options(p)
    p.set_defaults(run=_lesions)

    p = sub.add_parser("classify", parents=[common], help="classify localized lesions (hbm or expansion)",
                       description="Localize each input's hemorrhagic lesions (or reuse an earlier `cmbdet lesions` "
                                   "run with --lesions) and classify every lesion: --task hbm (multi-sequence MRI: "
                                   "hemorrhagic metastasis vs non-neoplastic hematoma) or --task expansion (baseline "
                                   "non-contrast CT: early hematoma expansion, >= 6 mL or >= 33 % growth). Writes "
                                   "classification.csv (per lesion + a subject row), counts.csv and the lesion "
                                   "label maps.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".nii/.nii.gz files, folders (a folder per subject for MRI) or text files listing paths")
    p.add_argument("--task", required=True, choices=("hbm", "expansion"))
    p.add_argument("-o", "--outdir", default="cmbdet_classify", help="output folder (default: cmbdet_classify)")
    p.add_argument("--lesions", metavar="DIR", help="reuse the label maps of an earlier `cmbdet lesions` run in DIR")
    p.add_argument("--cam", action="store_true", help="write class-activation-map PNGs over each lesion's crop")
    p.add_argument("--compare", action="store_true",
                   help="also write classification_compare.csv: each lesion under every model stored in the "
                        "weights (expansion: deep-only, radiomics-only, fused)")
    p.add_argument("--weights", help="classifier weights (default: the shipped weights/classifier_<task>.safetensors)")
    p.add_argument("--lesion-weights", help="lesion localizer weights (default: the shipped CT or MRI model)")
    p.add_argument("--modality", choices=("auto", "ct", "mri"), default="auto",
                   help="auto (default) decides per file: CT when BIDS-named _ct, or by its values")
    p.add_argument("--no-pictures", action="store_true", help="skip the lesion review PNGs")
    p.add_argument("--device", help="torch device (default: CUDA when present)")
    _add_batch_options(p)
    p.set_defaults(run=_classify)

    p = sub.add_parser("evaluate", parents=[common], help="score detections against a reference",
                       description="Lesion-level scoring (VALDO style): sensitivity, precision, F1, FP/subject, FROC.")
    p.add_argument("--truth", required=True,
                   help="truth.csv (subject, x_mm, y_mm, z_mm, diameter_mm, region; a session column joins the "
                        "subject id as SUBJECT_ses-SESSION)")
    p.add_argument("--detections", required=True, help="detections.csv from cmbdet detect")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--per-subject", metavar="CSV", help="also write per-subject figures to this CSV")
    p.add_argument("--score-threshold", type=_PROBABILITY, default=0.0, help="ignore detections below this score")
    p.add_argument("--min-distance-mm", type=_NON_NEGATIVE, default=5.0, help="minimum match distance (mm)")
    p.add_argument("--margin-mm", type=_NON_NEGATIVE, default=2.0, help="match distance = max(min, radius + margin)")
    p.add_argument("--counts", action="store_true",
                   help="compare per-scan counts instead of positions: --truth is a manifest (subject[, session], "
                        "n_cmb) or truth.csv, --detections a counts.csv or detections.csv; prints ICC, Bland-Altman "
                        "bias and limits, agreement in the categories 0 / 1 / 2-4 / >=5")
    p.set_defaults(run=_evaluate)

    _add_convert_parser(sub, common)

    train = sub.add_parser("train", parents=[common], help="train a stage on labelled scans")
    train_sub = train.add_subparsers(title="stages", metavar="STAGE")
    p = train_sub.add_parser("proposer", parents=[common], help="train the stage-1 3D CNN",
                             description="Train the stage-1 proposer on a phantom/data folder or a manifest.")
    p.add_argument("--data", required=True, nargs="+",
                   help="folder(s) with scans + truth.csv (+ mimics.csv), or manifest CSV(s) (subject,image)")
    p.add_argument("--truth", help="truth CSV for a manifest (default: truth.csv beside it)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--steps", type=_COUNT, default=1500)
    p.add_argument("--batch-size", type=_COUNT, default=8)
    p.add_argument("--spacing-mm", type=_POSITIVE, default=1.0, help="working grid of the network (mm, isotropic)")
    p.add_argument("--width", type=_number(int, 2, 64),
                   help="channels of the network's first level, from scratch (2-64; default 8, the shipped "
                        "network's; each level doubles it)")
    p.add_argument("--init", help="start from these proposer weights (fine-tuning, e.g. the shipped ones on "
                                  "your data); their width and working grid are kept")
    p.add_argument("--lr", type=_POSITIVE, default=2e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--min-target-sigma-mm", type=_POSITIVE, default=0.7,  # proposer.train.MIN_TARGET_SIGMA_MM
                   help="narrowest heat-map target (mm); wider gives small CMBs more weight in the loss")
    p.add_argument("--hard-negatives", type=float, default=0.0, metavar="FRACTION",
                   help="with --init: run those weights on the training scans first and centre this fraction "
                        "of each batch (at most 0.5) on their candidates that are not a CMB (default 0: none)")
    p.add_argument("--val-fraction", type=_HELD_OUT_FRACTION, default=0.15,
                   help="scans held out to measure recall and choose the stage-1-alone threshold")
    p.add_argument("--val", nargs="+", metavar="DATA",
                   help="separate labelled folder(s)/manifest(s) for validation instead of holding out "
                        "--val-fraction of --data (all of --data is then trained on); a manifest needs "
                        "truth.csv beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(run=_train_proposer)

    p = train_sub.add_parser("reclassifier", parents=[common], help="train the stage-2 YOLO classifier",
                             description="Mine stage-1 candidates on labelled scans and train the stage-2 "
                                         "YOLO classifier (ultralytics, offline) on their 2.5-D patches.")
    p.add_argument("--data", required=True, nargs="+", help="folder(s) or manifest CSV(s), as for the proposer")
    p.add_argument("--truth", help="truth CSV for a manifest (default: truth.csv beside it)")
    p.add_argument("--proposer", help="stage-1 weights used to mine candidates (default: the shipped one)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--epochs", type=_COUNT, default=30)
    p.add_argument("--batch-size", type=_COUNT, default=64)
    p.add_argument("--val", nargs="+", metavar="DATA",
                   help="separate labelled folder(s)/manifest(s) to validate on and choose the operating point "
                        "(default: 15%% of --data's subjects, held out); a manifest needs truth.csv beside it")
    p.add_argument("--fov-mm", type=_POSITIVE, default=FOV_MM,
                   help=f"side of the patch planes around each candidate, mm (default {FOV_MM:g}; 64 pixels; "
                        "stored in the weights and used at inference)")
    p.add_argument("--layout", default="mips", choices=sorted(LAYOUTS),
                   help="what the three patch channels show: planes (axial/coronal/sagittal), mips (minimum-"
                        "intensity projections over --slab-mm in the three orientations, default) or mixed "
                        "(axial plane + coronal/sagittal mIPs); stored in the weights")
    p.add_argument("--slab-mm", type=_POSITIVE, default=SLAB_MM, help=f"mIP slab thickness, mm (default {SLAB_MM:g})")
    p.add_argument("--max-candidates", type=_COUNT, default=60,
                   help="stage-1 candidates mined per scan (default 60); detect reads at most this many, as "
                        "many as the validation scans chose")
    p.add_argument("--no-shape", action="store_true",
                   help="train the YOLO classifier alone, without the 3-D shape model beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the patch images and ultralytics run here (default: a temp folder)")
    p.add_argument("--device", default="cpu",
                   help="where ultralytics trains the classifier: cpu (default), or a CUDA device index such as 0")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(run=_train_reclassifier)

    p = train_sub.add_parser("classifier", parents=[common], help="train a lesion crop classifier (hbm or expansion)",
                             description="Run the lesion localizer on labelled phantom sets (CT pairs for expansion, "
                                         "multi-sequence MRI for hbm), label each localized lesion from truth.csv, "
                                         "and train the crop classifier; the threshold is chosen on a held-out "
                                         "part of the subjects.")
    p.add_argument("--task", required=True, choices=("hbm", "expansion"))
    p.add_argument("--data", required=True, nargs="+", help="phantom set folder(s) with truth.csv")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--lesion-weights", help="lesion localizer weights (default: the shipped CT or MRI model)")
    p.add_argument("--cache", help="keep each subject's localized lesions and features here (reruns reuse them)")
    p.add_argument("--val-fraction", type=_number(float, 0, 1, low_open=True, high_open=True), default=0.2,
                   help="subjects held out to choose the threshold and report validation figures")
    p.add_argument("--epochs", type=_COUNT, default=None, help="training epochs (default: 40 expansion, 60 hbm)")
    p.add_argument("--ssl-epochs", type=_number(int, 0), default=60,
                   help="expansion: SimSiam pretraining epochs of the CNN encoder on the crops (0 = none)")
    p.add_argument("--metric-weight", type=_NON_NEGATIVE, default=0.3,
                   help="hbm: weight of the cross-site supervised contrastive term (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no log lines")
    p.set_defaults(run=_train_classifier)
    return parser


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    """The options of the shared batch runner (`cmbdet.batch.run_batch`): workers, Ray, overwrite, quiet."""
    p.add_argument("--workers", type=_COUNT, default=1, metavar="N",
                   help="run N subjects at a time in local worker processes (default 1: in this process)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run subjects as Ray tasks: on the cluster at ADDRESS (e.g. ray://head:10001), or without "
                        "ADDRESS on the cluster of $RAY_ADDRESS or a local Ray instance; needs pip install "
                        "'cmbdet[ray]' and inputs/OUTDIR on a filesystem all nodes see")
    p.add_argument("--overwrite", action="store_true",
                   help="redo this run's subjects, also when OUTDIR holds a run with other settings (other "
                        "subjects' folders are kept on disk and left out of the tables)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-subject lines")


def _where(args) -> str:
    return (f"Ray {args.ray or '(local or $RAY_ADDRESS)'}" if args.ray is not None
            else f"{args.workers} worker process(es)" if args.workers > 1 else "1 process")


def _detect(args) -> int:
    from cmbdet.batch import collect_inputs, progress_printer, run_batch
    from cmbdet.pipeline import DetectJob
    from cmbdet.report import write_report

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(None, f"--threshold must be in [0, 1], got {args.threshold:g}")
    found = collect_inputs(args.inputs, exclude=[args.outdir])
    if found.skipped and not args.quiet:
        print(f"cmbdet: skipped {len(found.skipped)} file(s) not taken as SWI/T2*-weighted magnitude scans by "
              f"their names: {found.skipped_summary()}", file=sys.stderr)
    if not found.subjects:
        raise InputError(None, "no input scans found")
    job = DetectJob(args.weights, reclassify=not args.no_reclassify, threshold=args.threshold, echo=args.echo,
                    pictures=not args.no_pictures, device=args.device)
    settings = job.settings()
    if not args.quiet:
        stages = "stage 1 + stage 2" if settings["stage2"] else "stage 1 only"
        print(f"cmbdet {__version__}: {len(found.subjects)} subject(s), {stages}, threshold "
              f"{settings['threshold']:g}, {_where(args)}", file=sys.stderr)

    def describe(record) -> str:
        if record.status != "ok":
            return f"ERROR: {record.message}"
        return f"{record.counts.get('n_cmb', 0)} CMB" + (f"; note: {record.message}" if record.message else "")

    progress, close = progress_printer(len(found.subjects), quiet=args.quiet, describe=describe,
                                       noteworthy=lambda record: record.status != "ok" or bool(record.message))
    try:
        result = run_batch(job, found.subjects, args.outdir, workers=args.workers, use_ray=args.ray is not None,
                           ray_address=args.ray or None, overwrite=args.overwrite, progress=progress,
                           report=write_report)
    finally:
        close()
    records = result.records
    if len(records) <= 50:
        width = max(len("subject"), *(len(r.subject) for r in records))
        print(f"{'subject':<{width}}  {'status':<6} {'n_cmb':>5} {'lobar':>5} {'deep':>5} {'infra':>5} {'unknown':>7}")
        for r in records:
            c = r.counts
            print(f"{r.subject:<{width}}  {r.status:<6} {c.get('n_cmb', ''):>5} {c.get('n_lobar', ''):>5} "
                  f"{c.get('n_deep', ''):>5} {c.get('n_infratentorial', ''):>5} {c.get('n_unknown', ''):>7}")
    failed = len(result.failed)
    if not args.quiet:
        done_before = f", {result.skipped_done} already done" if result.skipped_done else ""
        cleaned = f", {len(result.cleaned)} stale temp file(s) removed" if result.cleaned else ""
        print(f"wrote {Path(args.outdir) / 'detections.csv'}, counts.csv and index.html; {len(records) - failed} ok, "
              f"{failed} failed{done_before}{cleaned}", file=sys.stderr)
    return 1 if failed else 0


def _rescore(args) -> int:
    from cmbdet.pipeline import rescore

    records = rescore(args.outdir, args.threshold)
    n_cmb = sum(int(r.counts.get("n_cmb") or 0) for r in records)
    print(f"rescored {len(records)} subject(s) at threshold {args.threshold:g}: {n_cmb} CMB in all; rewrote "
          f"{Path(args.outdir) / 'detections.csv'}, counts.csv, label maps, markups and index.html", file=sys.stderr)
    return 0


def _phantom(args) -> int:
    from cmbdet.phantom import write_phantom_set

    if args.cmb_per_copy is not None and not args.insert_into:
        raise InputError(None, "--cmb-per-copy applies to --insert-into (microbleeds put into a scan of yours)")
    if args.kind != "cmb":
        return _phantom_hemorrhage(args)
    if args.insert_into:
        from cmbdet.phantom.insert import write_inserted_set

        if args.family != "classic" or args.without or args.tiny:
            raise InputError(None, "--family, --without and --tiny make whole phantoms; --insert-into puts "
                                   "microbleeds into your scan as it is")

        out = write_inserted_set(args.insert_into, args.outdir, n_copies=args.n,
                                 n_cmb=3 if args.cmb_per_copy is None else args.cmb_per_copy, seed=args.seed)
        print(f"wrote {args.n} copies of {args.insert_into} with synthetic microbleeds, one untouched copy and "
              f"truth.csv to {out}", file=sys.stderr)
        return 0
    without = tuple(w.strip() for w in args.without.split(",") if w.strip())
    try:
        out = write_phantom_set(args.outdir, args.n, args.seed, tiny=args.tiny, montage=not args.no_montage,
                                family=args.family, without=without)
    except ValueError as err:
        raise InputError(None, str(err)) from None
    print(f"wrote {args.n} phantom scan(s) of family {args.family} and truth.csv to {out}", file=sys.stderr)
    return 0


def _add_convert_parser(sub, common: argparse.ArgumentParser) -> None:
    from cmbdet.datasets import SEVERAL_SCANS_RULES

    convert = sub.add_parser("convert", parents=[common], help="convert ADNI/AIBL downloads or rated scans to BIDS",
                             description="Convert a download tree into a BIDS tree + manifest.csv (+ truth.csv, "
                                         "conversion_report.csv) that detect, evaluate and train read.")
    kinds = convert.add_subparsers(title="sources", metavar="SOURCE")
    for name, archive in (("adni", "ADNI"), ("aibl", "AIBL")):
        p = kinds.add_parser(name, parents=[common], help=f"a LONI {archive} download (DICOM or NIfTI)",
                             description=f"Convert a LONI {archive} download: the T2*-GRE / SWI series of every "
                                         "visit, with the microbleed reads as counts (and truth.csv when the reads "
                                         "give coordinates). The source tree is never modified.")
        p.add_argument("src", metavar="SRC", help=f"the download folder (holding {archive}/...)")
        p.add_argument("-o", "--outdir", required=True, help="output folder (BIDS tree + manifest.csv)")
        p.add_argument("--ratings", metavar="CSV", help="microbleed reads, e.g. MAYOADIRL_MRI_MCH_<date>.csv")
        p.add_argument("--series", metavar="REGEX",
                       help="take the series whose description matches this regex (case-insensitive) instead "
                            "of the default T2*/SWI/GRE patterns")
        p.add_argument("--several-scans", choices=SEVERAL_SCANS_RULES, default="rated-latest",
                       help="which scan of a visit with several to convert: the rated one, else the latest "
                            "(default); the latest; the earliest. The others are listed in the report")
        p.add_argument("--lps", action="store_true", help="rating coordinates are DICOM LPS (default scanner RAS)")
        p.set_defaults(run=_convert, archive=name)
    p = kinds.add_parser("points", parents=[common], help="any folder of scans + a CSV of rated world coordinates",
                         description="Convert every NIfTI file / DICOM series folder under SRC, with a rater's "
                                     "points (image, x_mm, y_mm, z_mm[, diameter_mm, status]; image relative to SRC).")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--points", metavar="CSV", help="image, x_mm, y_mm, z_mm[, diameter_mm, status]; "
                                                    "empty coordinates = read as clean (without it every image is "
                                                    "converted unrated: e.g. DICOM series for cmbdet detect)")
    p.add_argument("--lps", action="store_true", help="coordinates are DICOM LPS (default scanner RAS as nibabel)")
    p.add_argument("--unlisted-clean", action="store_true", help="an image without a row was read as clean "
                                                                 "(default: unrated)")
    p.add_argument("--series", metavar="REGEX", help="take a DICOM series without a row when its description "
                                                     "matches this (default: SWI/T2*/GRE, as for adni)")
    p.add_argument("--all-series", action="store_true",
                   help="take every DICOM series, whatever its description, and every NIfTI file, whatever its name")
    p.set_defaults(run=_convert, archive="points")


def _convert(args) -> int:
    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    if args.archive == "points":
        from cmbdet.datasets.points import convert_points

        result = convert_points(args.src, args.outdir, args.points, lps=args.lps,
                                unlisted_clean=args.unlisted_clean, series_pattern=args.series,
                                all_series=args.all_series, progress=progress)
    else:
        from cmbdet.datasets.adni import convert_adni
        from cmbdet.datasets.aibl import convert_aibl

        run = convert_adni if args.archive == "adni" else convert_aibl
        result = run(args.src, args.outdir, ratings=args.ratings, lps=args.lps, series_pattern=args.series,
                     several=args.several_scans, progress=progress)
    rated = sum(r["n_cmb"] != "" for r in result.manifest)
    print(f"converted {result.count('converted')} scan(s) ({rated} rated), skipped {result.count('skipped')}, "
          f"failed {result.count('error')}, unmatched ratings {result.count('unmatched')}; wrote "
          f"{result.files['manifest']}" + (f", {result.files['truth']}" if "truth" in result.files else "")
          + f" and {result.files['report']}", file=sys.stderr)
    for row in result.report:
        if row["status"] == "error":
            print(f"cmbdet: error: {row['source']}: {row['reason']}", file=sys.stderr)
    from cmbdet.datasets.loni import SAME_DAY_NOTE

    same_day = [r for r in result.report if r["status"] == "converted" and SAME_DAY_NOTE in r["reason"]]
    if same_day:
        print(f"cmbdet: warning: {len(same_day)} converted scan(s) carry a {SAME_DAY_NOTE} (the rated points "
              f"may belong to another scan of that day), e.g. {same_day[0]['source']}; see "
              f"{result.files['report']}", file=sys.stderr)
    if not result.count("converted"):  # nothing for detect: say why, with the first reason in the report
        first = next((r for r in result.report if r["status"] == "skipped"), None)
        print(f"cmbdet: error: nothing converted from {args.src}"
              + (f"; e.g. {first['source']}: skipped, {first['reason']}" if first else ""), file=sys.stderr)
    return 1 if result.count("error") or not result.count("converted") else 0


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
    from cmbdet.lesions.run import LesionsJob, lesion_subjects, plan_inputs

    subjects = lesion_subjects(plan_inputs(args.inputs, args.modality, exclude=[args.outdir]))
    if not subjects:
        raise InputError(None, "no input scans found")
    job = LesionsJob(args.weights, args.mri_weights, modality=args.modality, classical=args.classical,
                     pictures=not args.no_pictures, crops=args.crops, device=args.device)
    weights = job.settings()["weights"]
    if not args.quiet:
        method = ("classical peer" if args.classical else
                  f"network (CT{'' if weights['ct'] else ': none'}, MRI{'' if weights['mri'] else ': classical peer'})")
        print(f"cmbdet {__version__} lesions: {len(subjects)} subject(s), {method}, {_where(args)}", file=sys.stderr)

    def describe(record) -> str:
        if record.status != "ok":
            return f"ERROR: {record.message}"
        # "modality auto: CT (HU range ...)" -> "CT (auto): "; the reason is in counts.csv
        auto = record.message.startswith("modality auto: ")
        kind = f"{record.message[len('modality auto: '):].split(' ')[0]} (auto): " if auto else ""
        return f"{kind}{record.counts['n_lesions']} lesion(s), {float(record.counts['total_volume_ml']):.1f} mL"

    return _run_subjects(job, subjects, args, describe, "lesions.csv")


def _classify(args) -> int:
    from cmbdet.classify.run import ClassifyJob, with_reused_label_maps
    from cmbdet.lesions.run import LesionsJob, lesion_subjects, plan_inputs

    if args.lesions and not Path(args.lesions).is_dir():
        raise InputError(args.lesions, "--lesions needs the output folder of a `cmbdet lesions` run; this is a file"
                         if Path(args.lesions).exists() else "--lesions folder not found")
    subjects = lesion_subjects(plan_inputs(args.inputs, args.modality, exclude=[args.outdir]))
    if not subjects:
        raise InputError(None, "no input scans found")
    if args.lesions:
        subjects = with_reused_label_maps(subjects, args.lesions)
    localizer = LesionsJob(args.lesion_weights if args.task == "expansion" else None,
                           args.lesion_weights if args.task == "hbm" else None, modality=args.modality,
                           pictures=not args.no_pictures, device=args.device)
    job = ClassifyJob(args.task, args.weights, localizer, lesions_dir=args.lesions, cam=args.cam,
                      compare=args.compare, device=args.device)
    job.settings()  # a bad weights file fails here, before any subject
    if not args.quiet:
        source = f"lesions from {args.lesions}" if args.lesions else "lesions localized here"
        print(f"cmbdet {__version__} classify --task {args.task}: {len(subjects)} subject(s), {source}, "
              f"{_where(args)}", file=sys.stderr)

    def describe(record) -> str:
        if record.status != "ok":
            return f"ERROR: {record.message}"
        counts = record.counts
        return f"{counts['n_lesions']} lesion(s), subject: {counts['label']} {counts['probability']}"

    return _run_subjects(job, subjects, args, describe, "classification.csv")


def _run_subjects(job, subjects, args, describe, table: str) -> int:
    """Run a lesions/classify job over its subjects with the shared runner and the batch options;
    print the summary line; exit code 1 when a subject failed."""
    from functools import partial

    from cmbdet.batch import progress_printer, run_batch
    from cmbdet.report import write_report

    progress, close = progress_printer(len(subjects), quiet=args.quiet, describe=describe)
    try:
        result = run_batch(job, subjects, args.outdir, workers=args.workers, use_ray=args.ray is not None,
                           ray_address=args.ray or None, overwrite=args.overwrite, progress=progress,
                           report=partial(write_report, tables=list(job.tables)))
    finally:
        close()
    failed = len(result.failed)
    if not args.quiet:
        done_before = f", {result.skipped_done} already done" if result.skipped_done else ""
        cleaned = f", {len(result.cleaned)} stale temp file(s) removed" if result.cleaned else ""
        print(f"wrote {Path(args.outdir) / table}, counts.csv and index.html; {len(result.records) - failed} ok, "
              f"{failed} failed{done_before}{cleaned}", file=sys.stderr)
    return 1 if failed else 0


def _evaluate(args) -> int:
    from cmbdet.evaluate import evaluate, read_detections, read_truth, write_per_subject_csv

    if args.counts:
        return _evaluate_counts(args)

    if args.per_subject and not Path(args.per_subject).parent.is_dir():
        raise InputError(args.per_subject, "output folder does not exist")
    truth, detections = read_truth(args.truth), read_detections(args.detections)
    found = sorted(set(detections.centres) | set(detections.status or {}))
    if found and not set(found) & set(truth.subjects):
        raise InputError(args.detections, f"none of its {len(found)} subject(s) is in {args.truth} (e.g. "
                                          f"{found[0]!r} here, {truth.subjects[0]!r} there): check the ids")
    result = evaluate(truth, detections, score_threshold=args.score_threshold, min_distance_mm=args.min_distance_mm,
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


def _training_output(args):
    """(log, progress bar?) for the train commands: a tqdm bar on a terminal (log lines written above
    it), plain log lines when stderr is a file or pipe, nothing with --quiet."""
    if args.quiet:
        return (lambda line: None), False
    if sys.stderr.isatty():
        from tqdm import tqdm

        return (lambda line: tqdm.write(line, file=sys.stderr)), True
    return (lambda line: print(line, file=sys.stderr, flush=True)), False


def _evaluate_counts(args) -> int:
    from cmbdet.agreement import count_agreement, read_predicted_counts, read_rated_counts

    rated = read_rated_counts(args.truth)
    if not rated:
        raise InputError(args.truth, "no rated counts (n_cmb is empty for every scan)")
    predicted, notes = read_predicted_counts(args.detections, args.score_threshold, subjects=list(rated))
    result = count_agreement(rated, predicted)
    result.warnings[:0] = notes
    print(result.to_json() if args.json else result.summary_text())
    if args.json:
        for message in result.warnings:
            print(f"cmbdet: warning: {message}", file=sys.stderr)
    return 0


def _train_classifier(args) -> int:
    import json

    import numpy as np

    from cmbdet.classify.samples import build_sample_set, describe_phantom_sets
    from cmbdet.classify.train import train_expansion, train_hbm
    from cmbdet.lesions.infer import load_lesion_model
    from cmbdet.weights import SHIPPED_WEIGHTS_DIR

    _check_output_file(args.output)
    log, _ = _training_output(args)
    for folder in args.data:
        if not (Path(folder) / "truth.csv").is_file():
            raise InputError(folder, "not a phantom set (no truth.csv in it)")
    default = "lesions_ct.safetensors" if args.task == "expansion" else "lesions_mri.safetensors"
    localizer = load_lesion_model(args.lesion_weights or SHIPPED_WEIGHTS_DIR / default)
    rng = np.random.default_rng(args.seed)
    log(f"localizing lesions in {', '.join(args.data)} ...")
    try:
        samples = build_sample_set(args.task, args.data, ct_model=localizer if args.task == "expansion" else None,
                                   mri_model=localizer if args.task == "hbm" else None, cache_dir=args.cache,
                                   progress=lambda i, n, s: log(f"  {i}/{n} {s}") if i % 10 == 0 or i == n else None,
                                   perturbed=args.task == "expansion")
        if args.task == "expansion":
            model, report = train_expansion(samples, rng, val_fraction=args.val_fraction, epochs=args.epochs or 40,
                                            ssl_epochs=args.ssl_epochs, log=log)
        else:
            model, report = train_hbm(samples, rng, val_fraction=args.val_fraction, epochs=args.epochs or 60,
                                      metric_weight=args.metric_weight, log=log)
    except ValueError as err:  # no lesion localized, one class missing
        raise InputError(", ".join(args.data), str(err)) from None
    model.metadata.update(seed=args.seed, training_data=describe_phantom_sets(args.data, samples),
                          validation=report, localizer=Path(args.lesion_weights or default).name,
                          settings={"epochs": args.epochs, "val_fraction": args.val_fraction,
                                    **({"ssl_epochs": args.ssl_epochs} if args.task == "expansion" else
                                       {"metric_weight": args.metric_weight})})
    model.save(args.output)
    log(json.dumps(report))
    print(f"wrote {args.output} (threshold {model.threshold:.3f})")
    return 0


def _number(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False):
    """An argparse type: ``kind`` (int or float) within [low, high] (an end open with ``*_open``), so that an
    impossible setting is refused with the usage message (exit 2) before any work."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
    wanted = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        outside = (not math.isfinite(value)
                   or (low is not None and (value <= low if low_open else value < low))
                   or (high is not None and (value >= high if high_open else value > high)))
        if outside:
            raise argparse.ArgumentTypeError(f"{text} is outside {span}")
        return value

    return parse


#: Argument types used by several commands.
_COUNT = _number(int, 1)            # at least 1
_POSITIVE = _number(float, 0, low_open=True)
_NON_NEGATIVE = _number(float, 0)
_PROBABILITY = _number(float, 0, 1)
_HELD_OUT_FRACTION = _number(float, 0, 1, high_open=True)


def _check_output_file(path: str | Path, option: str = "-o") -> None:
    """Refuse, before any work, an output file that could not be written at the end: it is a folder, or a
    folder above it is a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"{option} must name a file, this is a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(path, f"cannot be written: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise InputError(path, f"cannot be written: no write permission in {parent}")
            break


def _echo_choice(value: str) -> str:
    """--echo: auto, rss, first, last or a 0-based echo index (checked before any work)."""
    if value in ("auto", "rss", "first", "last") or (value.isdigit() and len(value) < 4):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use auto, rss, first, last or a 0-based echo index (0 = the first)")


def _train_proposer(args) -> int:
    import numpy as np

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.proposer.train import mine_hard_negatives, prepare_scans, train_proposer, validate_proposer
    from cmbdet.training_data import describe_sources, hold_out, read_labelled_set

    if not 0.0 <= args.hard_negatives <= 0.5:
        raise InputError(None, f"--hard-negatives must be a fraction in [0, 0.5], got {args.hard_negatives}")
    _check_output_file(args.output)
    if args.hard_negatives and not args.init:
        raise InputError(None, "--hard-negatives mines with the --init weights: give --init too")
    if args.width is not None and args.init:
        raise InputError(None, "--width sets a new network (2-64 channels); --init keeps the width of its weights")
    scans = [s for source in args.data for s in read_labelled_set(source, args.truth)]
    rng = np.random.default_rng(args.seed)
    if args.val:
        train, val = scans, [s for source in args.val for s in read_labelled_set(source)]
    else:
        train, val = hold_out(scans, args.val_fraction, rng)
    _check_training_scans(train)
    log, bar = _training_output(args)
    log(f"preparing {len(train)} training scans ({len(val)} held out for validation) ...")
    init = load_proposer(args.init, device=args.device) if args.init else None
    spacing_mm = init.spacing_mm if init is not None else args.spacing_mm
    prepared = prepare_scans(train, spacing_mm)
    if args.hard_negatives:
        prepared = mine_hard_negatives(prepared, load_proposer(args.init, device=args.device), log=log)
    proposer = train_proposer(prepared, rng, steps=args.steps, batch_size=args.batch_size, device=args.device,
                              spacing_mm=spacing_mm, lr=args.lr, init=init, log=log, progress=bar,
                              width=args.width or 8,
                              min_target_sigma_mm=args.min_target_sigma_mm,
                              hard_negative_fraction=args.hard_negatives)
    proposer.metadata.update(seed=args.seed, training_data=describe_sources(args.data, train, role="training"),
                             validation_data=describe_sources(args.val or args.data, val,  # a held-out part of
                                                              role="validation" if args.val else "training"))
    if val:
        report = validate_proposer(proposer, val)
        proposer.metadata.update(report)
        log("validation: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in report.items()))
    proposer.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _check_training_scans(scans) -> None:
    """Refuse training data a detector cannot learn from: no scan left for training, or no microbleed."""
    if not scans:
        raise InputError(None, "no scan left for training (lower --val-fraction, or give --val)")
    if not any(len(s.cmb_xyz_mm) for s in scans):
        raise InputError(None, f"the {len(scans)} training scan(s) hold no microbleed: nothing to learn from "
                               "(truth.csv has only empty rows for them)")


def _train_reclassifier(args) -> int:
    import numpy as np

    from cmbdet.proposer.infer import load_proposer
    from cmbdet.reclassifier.train import train_reclassifier
    from cmbdet.training_data import describe_sources, read_labelled_set

    _check_output_file(args.output)
    scans = [s for source in args.data for s in read_labelled_set(source, args.truth)]
    _check_training_scans(scans)
    proposer = load_proposer(args.proposer)
    rng = np.random.default_rng(args.seed)
    val = [s for source in args.val for s in read_labelled_set(source)] if args.val else None
    reclassifier = train_reclassifier(scans, proposer, rng, val_scans=val, epochs=args.epochs,
                                      batch=args.batch_size, fov_mm=args.fov_mm, layout=args.layout,
                                      slab_mm=args.slab_mm, device=args.device, shape=not args.no_shape,
                                      max_candidates=args.max_candidates,
                                      workdir=Path(args.workdir) if args.workdir else None,
                                      log=_training_output(args)[0], progress=_training_output(args)[1])
    reclassifier.metadata.update(seed=args.seed, training_data=describe_sources(args.data, scans, role="training"),
                                 validation_data=describe_sources(args.val or [], val or [], role="validation"))
    reclassifier.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
