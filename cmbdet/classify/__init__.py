"""Crop classifiers over localized lesions (`cmbdet classify`): hemorrhagic metastasis vs
non-neoplastic hematoma on MRI, and early hematoma expansion on baseline CT."""
