"""LASSO selection + linear SVM + Platt scaling over a feature table, kept as plain arrays so that it
is saved in safetensors (no pickle) and applied with numpy alone.

    chain = fit_lasso_svm(X, y, groups, rng)      # X (N, F), y (N,) 0/1, groups (N,) subject ids
    p = chain.probability(X_new)                   # (M,) in [0, 1]

Steps, all fitted on the training rows only: standardize; L1-penalized logistic regression (LASSO)
with its penalty chosen by subject-grouped cross-validation (AUC), keeping the features with a
non-zero coefficient; a linear SVM on those (C by the same grouped cross-validation); Platt scaling
of the SVM's decision values fitted on out-of-fold decision values.

When the rows come from two or more domains (``domains``: the phantom family or site of each row),
the cross-validation leaves one domain out at a time instead, and a penalty or C is scored by the
mean of the held-out domains' AUCs: the choice, and the Platt scaling fitted on those held-out
decision values, are then estimates for a site the chain has never seen rather than for new
subjects of the training sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PENALTIES = np.logspace(-2.5, 1.0, 12)
SVM_C = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class LinearChain:
    """p = sigmoid(a * (w . ((x - mean) / scale)[selected] + b) + c). Arrays: ``mean``/``scale``
    (F,), ``selected`` (F,) bool, ``w`` (S,)."""

    mean: np.ndarray
    scale: np.ndarray
    selected: np.ndarray
    w: np.ndarray
    b: float
    a: float
    c: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, float) - self.mean) / self.scale
        return z[:, self.selected] @ self.w + self.b

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * self.decision(x) + self.c)))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.scale": self.scale,
                f"{prefix}.selected": self.selected.astype(np.float64), f"{prefix}.w": self.w,
                f"{prefix}.bac": np.array([self.b, self.a, self.c])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> LinearChain:
        b, a, c = (float(v) for v in arrays[f"{prefix}.bac"])
        return cls(arrays[f"{prefix}.mean"], arrays[f"{prefix}.scale"], arrays[f"{prefix}.selected"] > 0.5,
                   arrays[f"{prefix}.w"], b, a, c)


def _folds(y: np.ndarray, groups: np.ndarray, seed: int, n_splits: int = 5, domains: np.ndarray | None = None):
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

    if domains is not None and len(set(np.asarray(domains).tolist())) >= 2:
        return list(LeaveOneGroupOut().split(y, y, domains))
    n_splits = max(2, min(n_splits, int(min(np.bincount(y.astype(int), minlength=2)))))
    return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(y, y, groups))


def fit_lasso_svm(x: np.ndarray, y: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                  allowed: np.ndarray | None = None, domains: np.ndarray | None = None) -> LinearChain:
    """Fit the chain (see module docstring) on (N, F) features and (N,) 0/1 labels; ``groups`` (N,):
    subject of each row; ``allowed`` (F,) bool: the only features the LASSO may keep (default: all);
    ``domains`` (N,): family or site of each row (two or more: leave-one-domain-out choices)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import SVC

    x = np.asarray(x, float)
    y = np.asarray(y, int)
    seed = int(rng.integers(2**31))
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    folds = _folds(y, groups, seed, domains=domains)
    by_domain = domains is not None and len(set(np.asarray(domains).tolist())) >= 2

    def cv_auc(make, columns) -> tuple[float, np.ndarray]:
        out = np.zeros(len(y))
        for train, test in folds:
            model = make().fit(z[train][:, columns], y[train])
            out[test] = model.decision_function(z[test][:, columns])
        if by_domain:  # mean over held-out domains (each one's AUC, as a new site would be scored)
            return float(np.mean([roc_auc_score(y[test], out[test]) if len(set(y[test].tolist())) == 2 else 0.5
                                  for _, test in folds])), out
        return roc_auc_score(y, out), out

    allowed = np.ones(z.shape[1], bool) if allowed is None else np.asarray(allowed, bool)
    if not allowed.any():
        raise ValueError("fit_lasso_svm: no feature is allowed")
    all_columns = np.nonzero(allowed)[0]

    def lasso_at(c: float):  # liblinear shuffles with random_state: seeded, so a chain is reproducible
        return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", max_iter=2000, random_state=seed)

    best = max(PENALTIES, key=lambda c: cv_auc(lambda: lasso_at(c), all_columns)[0])
    lasso = lasso_at(best).fit(z[:, all_columns], y)
    selected = np.zeros(z.shape[1], bool)
    selected[all_columns[np.abs(lasso.coef_[0]) > 1e-8]] = True
    if not selected.any():
        selected[all_columns[int(np.argmax(np.abs(lasso.coef_[0])))]] = True
    columns = np.nonzero(selected)[0]
    scored = {c: cv_auc(lambda c=c: SVC(kernel="linear", C=c), columns) for c in SVM_C}
    svm_c = max(SVM_C, key=lambda c: scored[c][0])
    svm = SVC(kernel="linear", C=svm_c).fit(z[:, columns], y)
    out_of_fold = scored[svm_c][1]
    platt = LogisticRegression(C=1e4, max_iter=1000).fit(out_of_fold[:, None], y)
    return LinearChain(mean, scale, selected, svm.coef_[0].astype(float), float(svm.intercept_[0]),
                       float(platt.coef_[0, 0]), float(platt.intercept_[0]))
