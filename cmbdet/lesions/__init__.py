"""Hemorrhagic lesions (intracerebral hematomas on CT and MRI, hemorrhagic metastases on MRI):
`localize_lesions(volume, model) -> Lesions`. Follows the `proposer/` pattern: model.py, train.py,
infer.py; ct.py and mri.py hold each modality's input checks and brain mask; result.py the result
type; run.py the batch writer behind ``cmbdet lesions``."""
