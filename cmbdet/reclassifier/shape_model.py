"""The shape model of stage 2: gradient-boosted trees over `cmbdet.reclassifier.shape` measurements.

Trained with scikit-learn's ``HistGradientBoostingClassifier`` and kept as plain arrays (one row per
tree node), so that it is stored in the same safetensors file as the YOLO classifier — no pickle,
nothing runs on load — and scored here with numpy exactly as scikit-learn scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmbdet.reclassifier.shape import FEATURE_NAMES

#: Node arrays of the tree ensemble, as stored (key prefix ``shape.`` in the weights file).
_NODE_FIELDS = ("feature", "threshold", "left", "right", "is_leaf", "value", "missing_left")


@dataclass
class ShapeModel:
    """A boosted-tree ensemble over shape features: P(microbleed) = sigmoid(baseline + sum of leaves).

    Node arrays are concatenated over trees; ``tree_start[t]`` is the first node of tree t, and
    ``left``/``right`` index nodes within their own tree.
    """

    feature_names: tuple[str, ...]
    baseline: float
    tree_start: np.ndarray  # (T,) int64
    feature: np.ndarray  # (nodes,) int64
    threshold: np.ndarray  # (nodes,) float64: x <= threshold goes left
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray  # (nodes,) bool
    value: np.ndarray  # (nodes,) float64, leaf contributions (shrinkage applied)
    missing_left: np.ndarray  # (nodes,) bool: where a NaN feature goes

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(N,) probability of a microbleed for (N, n_features) `shape_features` rows."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, len(self.feature_names))
        raw = np.full(len(features), self.baseline)
        rows = np.arange(len(features))
        for start in self.tree_start:
            node = np.full(len(features), start)
            active = ~self.is_leaf[node]
            while active.any():
                here = node[active]
                x = features[rows[active], self.feature[here]]
                go_left = np.where(np.isnan(x), self.missing_left[here], x <= self.threshold[here])
                node[active] = start + np.where(go_left, self.left[here], self.right[here])
                active = ~self.is_leaf[node]
            raw += self.value[node]
        return 1.0 / (1.0 + np.exp(-raw))

    def arrays(self) -> dict[str, np.ndarray]:
        """The ensemble as named arrays (for a safetensors file)."""
        out = {f"shape.{name}": np.ascontiguousarray(getattr(self, name)) for name in _NODE_FIELDS}
        out["shape.tree_start"] = np.ascontiguousarray(self.tree_start)
        out["shape.baseline"] = np.array([self.baseline])
        return {k: (v.astype(np.uint8) if v.dtype == bool else v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], feature_names: list[str] | tuple[str, ...]) -> ShapeModel:
        fields = {name: np.asarray(arrays[f"shape.{name}"]) for name in _NODE_FIELDS}
        for name in ("is_leaf", "missing_left"):
            fields[name] = fields[name].astype(bool)
        if tuple(feature_names) != FEATURE_NAMES:
            raise ValueError("the shape model was trained on other shape features than this version computes")
        return cls(feature_names=tuple(feature_names), baseline=float(np.asarray(arrays["shape.baseline"])[0]),
                   tree_start=np.asarray(arrays["shape.tree_start"]).astype(np.int64), **fields)


#: Boosting rounds (trees) of the shape model: 600 since session 22 (300 before), chosen on the validation
#: families delta + epsilon with the context measurements (weights/DETECTOR_HISTORY.md "Session 22").
MAX_TREES = 600


def fit_shape_model(features: np.ndarray, is_cmb: np.ndarray, *, seed: int = 0, max_iter: int = MAX_TREES,
                    learning_rate: float = 0.05, max_leaf_nodes: int = 15, min_samples_leaf: int = 40) -> ShapeModel:
    """Fit the boosted trees on (N, n_features) shape features and (N,) labels (True = microbleed)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    is_cmb = np.asarray(is_cmb, dtype=bool)
    if is_cmb.all() or not is_cmb.any():
        raise ValueError("the shape model needs both microbleeds and mimics to learn from")
    clf = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                         min_samples_leaf=min_samples_leaf, l2_regularization=1.0,
                                         early_stopping=False, random_state=seed)
    clf.fit(np.asarray(features, dtype=np.float64), is_cmb)
    positive = int(np.flatnonzero(clf.classes_ == True)[0])  # noqa: E712 (numpy bool)
    sign = 1.0 if positive == 1 else -1.0
    trees = [predictors[0].nodes for predictors in clf._predictors]
    starts = np.cumsum([0] + [len(t) for t in trees[:-1]]).astype(np.int64)
    nodes = np.concatenate(trees)
    return ShapeModel(
        feature_names=FEATURE_NAMES,
        baseline=sign * float(np.ravel(clf._baseline_prediction)[0]),
        tree_start=starts,
        feature=nodes["feature_idx"].astype(np.int64),
        threshold=nodes["num_threshold"].astype(np.float64),
        left=nodes["left"].astype(np.int64),
        right=nodes["right"].astype(np.int64),
        is_leaf=nodes["is_leaf"].astype(bool),
        value=sign * nodes["value"].astype(np.float64),
        missing_left=nodes["missing_go_to_left"].astype(bool),
    )
