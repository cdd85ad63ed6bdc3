"""Dataset converters: LONI download trees (ADNI, AIBL) and rated point lists into BIDS + a manifest.

* `cmbdet.datasets.adni` / `cmbdet.datasets.aibl`: the two LONI layouts (`convert_adni`, `convert_aibl`).
* `cmbdet.datasets.points`: any folder of images plus a rater's CSV of world coordinates.
* Shared rooms: `loni` (walking a download tree, choosing one scan per visit, the conversion run),
  `series` (which series are susceptibility-weighted), `dicom` (DICOM checks and dcm2niix),
  `ratings` (microbleed read tables), `manifest` (BIDS names, manifest.csv, truth.csv, the report).
"""
