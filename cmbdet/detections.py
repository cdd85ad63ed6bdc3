"""`Detections`: the one result type of every stage (candidates, microbleeds, hemorrhagic lesions).

Positions are kept in scanner RAS mm (the truth, independent of any grid); voxel indices are derived
from a `Volume` when written. Stage scores ride along by name (``stage1``, ``stage2``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmbdet.volume import Volume


@dataclass(frozen=True)
class Detections:
    """N findings in one scan.

    ``xyz_mm``: (N, 3) centres, scanner RAS mm. ``score``: (N,) final score in [0, 1].
    ``diameter_mm``: (N,) estimated visible diameter. ``region``: (N,) MARS region names
    ('lobar', 'deep', 'infratentorial', 'unknown' when the scan cannot anchor the atlas, or '' when
    not assigned). ``stage_scores``: name -> (N,). ``notes``: what a user should know about these
    findings (e.g. why regions are unknown), in words.
    """

    xyz_mm: np.ndarray
    score: np.ndarray
    diameter_mm: np.ndarray
    region: np.ndarray = field(default=None)  # type: ignore[assignment]
    stage_scores: dict[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.score)
        object.__setattr__(self, "xyz_mm", np.asarray(self.xyz_mm, dtype=float).reshape(n, 3))
        object.__setattr__(self, "score", np.asarray(self.score, dtype=float).reshape(n))
        object.__setattr__(self, "diameter_mm", np.asarray(self.diameter_mm, dtype=float).reshape(n))
        region = np.full(n, "", dtype=object) if self.region is None else np.asarray(self.region, dtype=object)
        object.__setattr__(self, "region", region.reshape(n))

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    def subset(self, keep: np.ndarray) -> Detections:
        """The detections selected by a boolean mask or index array, in that order."""
        return Detections(
            xyz_mm=self.xyz_mm[keep],
            score=self.score[keep],
            diameter_mm=self.diameter_mm[keep],
            region=self.region[keep],
            stage_scores={name: values[keep] for name, values in self.stage_scores.items()},
            notes=self.notes,
        )

    def sorted_by_score(self) -> Detections:
        return self.subset(np.argsort(-self.score, kind="stable"))

    def to_records(self, subject: str) -> list[dict]:
        """Records with ``subject, x_mm, y_mm, z_mm, score`` (world mm), e.g. for `cmbdet.evaluate`."""
        return [{"subject": subject, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2], "score": float(s)}
                for p, s in zip(self.xyz_mm, self.score, strict=True)]

    def source_ijk(self, volume: Volume) -> np.ndarray:
        """(N, 3) integer voxel indices in the input file's own array order (nearest voxel)."""
        return np.rint(volume.to_source_ijk(volume.xyz_mm_to_ijk(self.xyz_mm))).astype(int)

    def to_rows(self, subject: str, volume: Volume) -> list[dict]:
        """One dict per detection with the columns of the ``detections.csv`` contract."""
        ijk = self.source_ijk(volume)
        rows = []
        for n in range(len(self)):
            row = {
                "subject": subject,
                "x_mm": round(float(self.xyz_mm[n, 0]), 2),
                "y_mm": round(float(self.xyz_mm[n, 1]), 2),
                "z_mm": round(float(self.xyz_mm[n, 2]), 2),
                "i": int(ijk[n, 0]),
                "j": int(ijk[n, 1]),
                "k": int(ijk[n, 2]),
                "score": round(float(self.score[n]), 4),
                "diameter_mm": round(float(self.diameter_mm[n]), 1),
                "region": self.region[n],
            }
            for name, values in self.stage_scores.items():
                row[f"{name}_score"] = round(float(values[n]), 4)
            rows.append(row)
        return rows
