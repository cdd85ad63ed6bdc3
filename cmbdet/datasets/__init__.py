"""Dataset converters: LONI download trees (ADNI, AIBL) and rated point lists into BIDS + a manifest.

* `cmbdet.datasets.adni` / `cmbdet.datasets.aibl`: the two LONI layouts (`convert_adni`, `convert_aibl`).
* `cmbdet.datasets.points`: any folder of images plus a rater's CSV of world coordinates.
* Shared rooms: `loni` (walking a download tree, choosing one scan per visit, the conversion run),
  `series` (which series are susceptibility-weighted), `dicom` (DICOM checks and dcm2niix),
  `ratings` (microbleed read tables), `bids` (the output tree), `manifest` (manifest.csv, truth.csv,
  the report).
"""

#: Rules for choosing one scan when a visit has several (``--several-scans``; see `cmbdet.datasets.loni`).
SEVERAL_SCANS_RULES = ("rated-latest", "latest", "earliest")
