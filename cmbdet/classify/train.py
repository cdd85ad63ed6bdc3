"""Training of the crop classifiers (`cmbdet train classifier --task hbm|expansion`).

Data: `cmbdet.classify.samples.SampleSet` of phantom sets run through the lesion localizer. The
subjects are split (by subject, stratified by label and site) into a fitting part and a validation
part; the validation part chooses the threshold and reports validation figures; nothing of a
held-out site or family is read here.

expansion (baseline CT):
1. SimSiam pretraining of the CNN encoder on the fitting part's crops (labels unused);
2. cross-fitting: 5 CNNs (folds by subject), each fine-tuned on the labels of four folds; its
   logits on the fifth are that fold's deep feature, so the LASSO + SVM never sees a score of a
   crop its network was fitted on; at use (and on validation) the deep feature is the mean logit
   of the 5 (`CropEnsemble`: the same scale as the out-of-fold logits; a logit means the same in
   every fold's network, an embedding's coordinates would not). When the training subjects come
   from two or more families (sites), the folds are the families instead: each CNN is trained
   without one family, so the deep feature the LASSO weighs is what a CNN makes of a painter it
   never saw, and the LASSO + SVM choices are made leaving one family out
   (`cmbdet.classify.linear`) — a deep or radiomics feature that only works within one painter's
   rendering earns no weight;
3. LASSO + linear SVM + Platt (`cmbdet.classify.linear`) on deep, radiomics and fused features, the
   LASSO choosing only among radiomics that a re-acquisition leaves nearly unchanged (ICC >=
   ``ROBUST_ICC`` between the lesions of the re-measured subjects and their perturbed copies,
   `cmbdet.classify.robustness`; the sample set must be built with ``perturbed=True``);
4. threshold: the best Youden index (sensitivity + specificity - 1) of the fused score of each
   validation subject's largest hematoma.

hbm (MRI): `HBMNet` trained with binary cross-entropy plus a supervised contrastive term on its fused
embeddings in which pairs of the same class from different sites weigh twice as much as pairs from
one site (the neighbourhood term that pulls same-class lesions of different sites together);
augmentation includes dropping whole sequences (so a missing sequence is a seen case). Threshold:
the best subject accuracy on validation (a subject's score is its most suspicious lesion).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cmbdet.classify.features import MRI_SEQUENCES
from cmbdet.classify.linear import fit_lasso_svm
from cmbdet.classify.model import ClassifierModel, tabular_input
from cmbdet.classify.nets import CropCNN, CropEncoder, CropEnsemble, HBMNet, SimSiam
from cmbdet.classify.robustness import ROBUST_ICC, intraclass_correlation
from cmbdet.classify.samples import SampleSet, remeasured

#: The robustness filter needs at least this many re-measured lesions.
MIN_REMEASURED = 10

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --- augmentation -----------------------------------------------------------------------------


def augment(rng: np.random.Generator, crops: np.ndarray, task: str) -> np.ndarray:
    """Random flips, quarter turns, shifts of up to 4 pixels; CT: the reconstruction kernel (Gaussian
    blur or unsharp masking), HU gain/offset and noise; MRI: per-sequence gain/gamma and noise; on
    (B, 6, P, P) crops (channel 5 = mask: geometry only)."""
    out = np.empty_like(crops)
    for b, crop in enumerate(crops):
        c = crop
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[:, :, ::-1]
        c = np.rot90(c, int(rng.integers(4)), axes=(1, 2))
        c = np.roll(c, tuple(int(v) for v in rng.integers(-4, 5, 2)), axis=(1, 2)).copy()
        images = c[:5]
        if task == "expansion":  # what a CT site changes: kernel (blur / sharpening), calibration, noise
            if rng.random() < 0.6:
                sigma = rng.uniform(0.3, 1.5)
                smooth = ndimage.gaussian_filter(images, (0, sigma, sigma))
                images = smooth if rng.random() < 0.6 else images + rng.uniform(0.3, 1.0) * (images - smooth)
            images = images * rng.uniform(0.92, 1.08) + rng.uniform(-0.08, 0.08)
            images = images + rng.normal(0.0, rng.uniform(0.0, 0.08), images.shape)
        else:
            gain = rng.uniform(0.8, 1.25, (5, 1, 1))
            gamma = rng.uniform(0.8, 1.25, (5, 1, 1))
            images = np.clip(images, 0, None) ** gamma * gain
            images = images + rng.normal(0.0, rng.uniform(0.0, 0.08), images.shape) * (images > 0)
        c[:5] = images
        out[b] = c
    return out.astype(np.float32)


def drop_sequences(rng: np.random.Generator, crops: np.ndarray, tabular: np.ndarray, present: np.ndarray,
                   blocks: list[np.ndarray], p: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Drop present MRI sequences at random (at least one stays): its crop channel, its radiomics
    columns (``blocks[i]``: column indices of sequence i in ``tabular``) and its presence flag
    (the column ``n_radiomics + i``) are zeroed. Works on raw (unstandardized) tabular rows."""
    crops, tabular = crops.copy(), tabular.copy()
    n_radiomics = tabular.shape[1] - len(MRI_SEQUENCES) - 2
    for b in range(len(crops)):
        have = np.nonzero(present[b] > 0)[0]
        if len(have) < 2:
            continue
        drop = [i for i in have if rng.random() < p][: len(have) - 1]
        for i in drop:
            crops[b, i] = 0.0
            tabular[b, blocks[i]] = 0.0
            tabular[b, n_radiomics + i] = 0.0
    return crops, tabular


# --- CNN pieces ---------------------------------------------------------------------------------


def _seed_torch(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))


def _fit(net: torch.nn.Module, n: int, rng: np.random.Generator, batch_loss: Callable[[np.ndarray], torch.Tensor],
         *, epochs: int, batch: int, lr: float, name: str, log: Log, sgd: bool = False) -> None:
    """Minibatch training of ``net`` over ``n`` rows: ``batch_loss(indices)`` gives each batch's loss.
    AdamW with a one-cycle schedule (``sgd``: SGD with momentum and a cosine schedule, for SimSiam)."""
    steps = max(1, epochs * int(np.ceil(n / batch)))
    if sgd:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if len(idx) < 2:
                continue
            loss = batch_loss(idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        if epoch % 10 == 0 or epoch == epochs - 1:
            log(f"{name} epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f}")
    net.eval()


def _pos_weight(labels: np.ndarray) -> torch.Tensor:
    """Weight of the positive class that balances the two in a binary cross-entropy."""
    positive = max(float(np.mean(labels)), 1e-3)
    return torch.tensor((1 - positive) / positive)


def pretrain_simsiam(crops: np.ndarray, rng: np.random.Generator, *, task: str, width: int = 16,
                     epochs: int = 60, batch: int = 32, log: Log = _quiet) -> CropEncoder:
    """A `CropEncoder` pretrained with SimSiam on unlabelled (N, 6, P, P) crops (two augmented views each)."""
    _seed_torch(rng)
    model = SimSiam(CropEncoder(crops.shape[1], width))

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        return model.loss(torch.from_numpy(augment(rng, crops[idx], task)),
                          torch.from_numpy(augment(rng, crops[idx], task)))

    _fit(model, len(crops), rng, batch_loss, epochs=epochs, batch=batch, lr=0.05 * batch / 256 * 4, name="simsiam",
         log=log, sgd=True)
    return model.encoder.eval()


def train_cnn(crops: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, task: str = "expansion",
              width: int = 16, epochs: int = 40, batch: int = 32, lr: float = 2e-3,
              encoder_state: dict | None = None, log: Log = _quiet) -> CropCNN:
    """A `CropCNN` fitted to (N, 6, P, P) crops with 0/1 labels (classes balanced by weighting);
    ``encoder_state``: start from a pretrained encoder."""
    _seed_torch(rng)
    net = CropCNN(crops.shape[1], width)
    if encoder_state is not None:
        net.encoder.load_state_dict(encoder_state)
    labels = np.asarray(labels, np.float32)
    pos_weight = _pos_weight(labels)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(augment(rng, crops[idx], task))
        return F.binary_cross_entropy_with_logits(net(x), torch.from_numpy(labels[idx]), pos_weight=pos_weight)

    _fit(net, len(crops), rng, batch_loss, epochs=epochs, batch=batch, lr=lr, name="cnn", log=log)
    return net.eval()


def cnn_logits(net: CropCNN | CropEnsemble, crops: np.ndarray) -> np.ndarray:
    """(N,) logits of a `CropCNN` (or the mean of a `CropEnsemble`) for (N, 6, P, P) crops."""
    with torch.inference_mode():
        return np.concatenate([net(torch.from_numpy(crops[s:s + 64])).numpy()
                               for s in range(0, len(crops), 64)]) if len(crops) else np.zeros(0)


# --- splits and thresholds ------------------------------------------------------------------------


def split_subjects(samples: SampleSet, rng: np.random.Generator, val_fraction: float) -> tuple[list[str], list[str]]:
    """(fitting subjects, validation subjects): by subject, stratified by site and subject label."""
    strata: dict[tuple, list[str]] = {}
    for subject in sorted(set(samples.subjects.tolist())):
        key = (samples.subject_sites.get(subject, ""), samples.subject_labels.get(subject, -1))
        strata.setdefault(key, []).append(subject)
    fit, val = [], []
    for members in strata.values():
        members = [members[i] for i in rng.permutation(len(members))]
        n_val = int(round(len(members) * val_fraction))
        val.extend(members[:n_val])
        fit.extend(members[n_val:])
    return sorted(fit), sorted(val)


def subject_scores(samples: SampleSet, probability: np.ndarray, task: str) -> dict[str, float]:
    """A subject's score: hbm its most suspicious lesion, expansion its largest lesion."""
    out: dict[str, float] = {}
    for subject in dict.fromkeys(samples.subjects.tolist()):
        rows = np.nonzero(samples.subjects == subject)[0]
        if task == "hbm":
            out[subject] = float(probability[rows].max())
        else:
            out[subject] = float(probability[rows[int(np.argmax(samples.volume_ml[rows]))]])
    return out


def choose_threshold(scores: np.ndarray, labels: np.ndarray, rule: str) -> float:
    """The threshold with the best ``rule`` ("youden" or "accuracy") over the observed scores; the
    midpoint of the best run of equally good cut points."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    cuts = np.unique(np.concatenate([[0.0, 1.0], (np.sort(scores)[1:] + np.sort(scores)[:-1]) / 2.0]))
    values = []
    for cut in cuts:
        called = scores >= cut
        if rule == "accuracy":
            values.append(float((called == labels.astype(bool)).mean()))
        else:
            sens = called[labels == 1].mean() if (labels == 1).any() else 0.0
            spec = (~called[labels == 0]).mean() if (labels == 0).any() else 0.0
            values.append(float(sens + spec - 1.0))
    values = np.array(values)
    best = np.nonzero(values >= values.max() - 1e-12)[0]
    runs = np.split(best, np.nonzero(np.diff(best) > 1)[0] + 1)  # consecutive equally good cuts
    widest = max(runs, key=lambda run: cuts[run[-1]] - cuts[run[0]])
    return float((cuts[widest[0]] + cuts[widest[-1]]) / 2.0)


def _auc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def _labelled(samples: SampleSet) -> SampleSet:
    """The lesions matched to a truth lesion; both classes must be there."""
    labelled = samples.subset(samples.labels >= 0)
    counts = np.bincount(labelled.labels, minlength=2) if len(labelled) else np.zeros(2, int)
    if counts.min() < 2:
        raise ValueError(f"too few labelled lesions to train on ({counts[0]} negative, {counts[1]} positive "
                         f"among {len(samples)} localized): does truth.csv name these subjects?")
    return labelled


# --- expansion ------------------------------------------------------------------------------------


def train_expansion(samples: SampleSet, rng: np.random.Generator, *, val_fraction: float = 0.2, width: int = 16,
                    epochs: int = 40, ssl_epochs: int = 60, folds: int = 5, log: Log = _quiet
                    ) -> tuple[ClassifierModel, dict]:
    """The expansion model (see module docstring) and a report of its validation figures."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

    labelled = _labelled(samples)
    fit_subjects, val_subjects = split_subjects(labelled, rng, val_fraction)
    fit, val = labelled.of_subjects(fit_subjects), labelled.of_subjects(val_subjects)
    per_class = [len({s for s, y in zip(fit.subjects, fit.labels) if y == label}) for label in (0, 1)]
    if min(per_class) < 2:  # the subject-grouped cross-validation needs two subjects of each class
        raise ValueError(f"too few subjects to fit after holding out {len(val_subjects)} for validation "
                         f"({per_class[1]} with an expanding and {per_class[0]} with a stable hematoma; "
                         f"at least 2 of each are needed, 50+ for a useful model)")
    log(f"expansion: {len(fit)} lesions / {len(fit_subjects)} subjects to fit, "
        f"{len(val)} / {len(val_subjects)} to validate")
    encoder = pretrain_simsiam(fit.crops, rng, task="expansion", width=width, epochs=ssl_epochs, log=log) \
        if ssl_epochs > 0 else None
    encoder_state = None if encoder is None else encoder.state_dict()
    deep_oof = np.zeros((len(fit), 1))
    families = sorted(set(fit.sites.tolist()))
    if len(families) >= 2:  # leave one family out: the deep feature as a new painter would see it
        log(f"cross-fitting by family ({', '.join(families)}): each CNN is trained without one of them")
        splits = list(LeaveOneGroupOut().split(fit.labels, fit.labels, fit.sites))
    else:
        n_splits = max(2, min(folds, int(min(np.bincount(fit.labels, minlength=2)))))
        splits = list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(rng.integers(2**31)))
                      .split(fit.labels, fit.labels, fit.subjects))
    n_splits = len(splits)
    net = CropEnsemble(n_splits, fit.crops.shape[1], width)
    for k, (train_rows, test_rows) in enumerate(splits):
        member = train_cnn(fit.crops[train_rows], fit.labels[train_rows], rng, width=width, epochs=epochs,
                           encoder_state=encoder_state, log=log if k == 0 else _quiet)
        deep_oof[test_rows, 0] = cnn_logits(member, fit.crops[test_rows])
        net.members[k].load_state_dict(member.state_dict())
        log(f"cross-fitted CNN {k + 1}/{n_splits} done")
    net.eval()
    inputs_fit = {"deep": deep_oof, "radiomics": fit.radiomics, "fused": np.concatenate([deep_oof, fit.radiomics], 1)}
    robust = robust_features(fit)
    if robust is not None:
        log(f"radiomics robust to a re-acquisition (ICC >= {ROBUST_ICC}): {int(robust.sum())} of {len(robust)}")
    allowed = {"deep": None, "radiomics": robust,
               "fused": None if robust is None else np.concatenate([[True], robust])}
    chains = {name: fit_lasso_svm(x, fit.labels, fit.subjects, rng, allowed[name],
                                  domains=fit.sites if len(families) >= 2 else None)
              for name, x in inputs_fit.items()}
    for name, chain in chains.items():
        log(f"{name}: LASSO kept {int(chain.selected.sum())} of {len(chain.selected)} features")
    model = ClassifierModel(task="expansion", net=net, threshold=0.5, names=samples.names, chains=chains)
    report: dict = {"fit_subjects": len(fit_subjects), "val_subjects": len(val_subjects), "fit_lesions": len(fit),
                    "val_lesions": len(val), "cross_fitting": "by family" if len(families) >= 2 else "by subject"}
    if robust is not None:
        report["robust_radiomics"] = {"icc_threshold": ROBUST_ICC, "kept": [n for n, k in zip(fit.names, robust) if k]}
    if len(val):
        deep_val = cnn_logits(net, val.crops)[:, None]
        inputs_val = {"deep": deep_val, "radiomics": val.radiomics,
                      "fused": np.concatenate([deep_val, val.radiomics], 1)}
        probs = {name: chains[name].probability(inputs_val[name]) for name in chains}
        subject = {name: subject_scores(val, p, "expansion") for name, p in probs.items()}
        names = sorted(subject["fused"])
        truth = np.array([val.subject_labels[s] for s in names])
        model.threshold = choose_threshold(np.array([subject["fused"][s] for s in names]), truth, "youden")
        report.update({f"val_auc_{name}": _auc(truth, [subject[name][s] for s in names]) for name in chains})
        report["threshold"] = model.threshold
    return model, report


def robust_features(samples: SampleSet) -> np.ndarray | None:
    """(F,) bool: the radiomics whose ICC between each lesion and its perturbed re-acquisition reaches
    ``ROBUST_ICC`` (`cmbdet.classify.robustness`), over the re-measured lesions; None when the samples
    carry fewer than ``MIN_REMEASURED`` of them."""
    if samples.perturbed_radiomics is None or samples.perturbed_radiomics.shape != samples.radiomics.shape:
        return None
    rows = np.isfinite(samples.perturbed_radiomics).all(axis=1) & np.array([remeasured(s) for s in samples.subjects])
    if rows.sum() < MIN_REMEASURED:
        return None
    icc = intraclass_correlation(np.stack([samples.radiomics[rows], samples.perturbed_radiomics[rows]]))
    return icc >= ROBUST_ICC


# --- hbm ----------------------------------------------------------------------------------------------


def sequence_blocks(names: tuple[str, ...]) -> list[np.ndarray]:
    """Column indices of each MRI sequence's radiomics (by the ``<sequence>.`` prefix)."""
    return [np.array([i for i, n in enumerate(names) if n.startswith(f"{seq}.")], int) for seq in MRI_SEQUENCES]


def cross_site_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, sites: torch.Tensor,
                           temperature: float = 0.2, cross_site_weight: float = 2.0) -> torch.Tensor:
    """Supervised contrastive loss over L2-normalized (B, E) embeddings; positives are the other
    lesions of the same class, those of another site weighted ``cross_site_weight``."""
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    same = (labels[:, None] == labels[None, :]) & ~eye
    weight = same.float() * torch.where(sites[:, None] != sites[None, :], cross_site_weight, 1.0)
    has = weight.sum(1) > 0
    if not has.any():
        return embeddings.sum() * 0.0
    return -((weight * log_prob).sum(1)[has] / weight.sum(1)[has]).mean()


def fit_hbm_net(samples: SampleSet, rng: np.random.Generator, *, width: int = 12, epochs: int = 60, batch: int = 32,
                lr: float = 2e-3, metric_weight: float = 0.3, log: Log = _quiet
                ) -> tuple[HBMNet, np.ndarray, np.ndarray]:
    """(net, tabular mean, tabular scale) fitted to labelled MRI lesions."""
    _seed_torch(rng)
    raw = tabular_input(radiomics=samples.radiomics, present=samples.present, volume_ml=samples.volume_ml,
                        n_lesions=samples.n_lesions)
    mean, scale = raw.mean(0), raw.std(0)
    scale[scale < 1e-9] = 1.0
    blocks = sequence_blocks(samples.names)
    site_ids = {s: i for i, s in enumerate(sorted(set(samples.sites.tolist())))}
    sites = torch.tensor([site_ids[s] for s in samples.sites])
    labels = samples.labels.astype(np.float32)
    pos_weight = _pos_weight(labels)
    net = HBMNet(raw.shape[1], width)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        crops, tab = drop_sequences(rng, samples.crops[idx], raw[idx], samples.present[idx], blocks)
        crops = augment(rng, crops, "hbm")
        tab = (tab - mean) / scale + rng.normal(0.0, 0.1, tab.shape)
        logits, fused, _ = net(torch.from_numpy(crops), torch.from_numpy(tab).float())
        y = torch.from_numpy(labels[idx])
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        if metric_weight > 0:
            loss = loss + metric_weight * cross_site_contrastive(fused, y, sites[idx])
        return loss

    _fit(net, len(labels), rng, batch_loss, epochs=epochs, batch=batch, lr=lr, name="hbm", log=log)
    return net.eval(), mean, scale


def train_hbm(samples: SampleSet, rng: np.random.Generator, *, val_fraction: float = 0.2, width: int = 12,
              epochs: int = 60, metric_weight: float = 0.3, log: Log = _quiet) -> tuple[ClassifierModel, dict]:
    """The hbm model (see module docstring) and a report of its validation figures."""
    labelled = _labelled(samples)
    fit_subjects, val_subjects = split_subjects(labelled, rng, val_fraction)
    fit, val = labelled.of_subjects(fit_subjects), labelled.of_subjects(val_subjects)
    log(f"hbm: {len(fit)} lesions / {len(fit_subjects)} subjects to fit ({', '.join(sorted(set(fit.sites)))}), "
        f"{len(val)} / {len(val_subjects)} to validate")
    net, mean, scale = fit_hbm_net(fit, rng, width=width, epochs=epochs, metric_weight=metric_weight, log=log)
    model = ClassifierModel(task="hbm", net=net, threshold=0.5, names=samples.names, tab_mean=mean, tab_scale=scale)
    report: dict = {"fit_subjects": len(fit_subjects), "val_subjects": len(val_subjects), "fit_lesions": len(fit),
                    "val_lesions": len(val), "metric_weight": metric_weight}
    if len(val):
        probability = model_scores_from_samples(model, val)
        subject = subject_scores(val, probability, "hbm")
        names = sorted(subject)
        truth = np.array([val.subject_labels[s] for s in names])
        scores = np.array([subject[s] for s in names])
        model.threshold = choose_threshold(scores, truth, "accuracy")
        report.update(val_auc=_auc(truth, scores), threshold=model.threshold,
                      val_accuracy=float(((scores >= model.threshold) == truth.astype(bool)).mean()))
    return model, report


def model_scores_from_samples(model: ClassifierModel, samples: SampleSet, variant: str = "fused") -> np.ndarray:
    """The model's probability for every lesion of a `SampleSet` (cached features, no scan read)."""
    from cmbdet.classify.features import LesionFeatures

    features = [LesionFeatures(int(samples.lesion_ids[i]), samples.crops[i], samples.radiomics[i], samples.names,
                               samples.present[i], float(samples.volume_ml[i]), int(samples.n_lesions[i]))
                for i in range(len(samples))]
    return model.scores(features)[variant]
