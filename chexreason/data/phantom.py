"""The synthetic two-site chest radiograph phantom benchmark.

Why: no machine here can download MIMIC-CXR, CheXpert or model weights, yet the recipe (SFT → GRPO →
in-distribution vs cross-dataset evaluation) must run end to end and really learn. This module draws
frontal chest radiograph phantoms — lungs with vessel markings, ribs, clavicles, spine, trachea, heart
and mediastinum, diaphragm domes with a gastric bubble, soft tissue — in which every finding has a
visible, documented cause, at two *sites* that differ the way CheXpert/MIMIC and NIH differ.

Findings and their visible causes. Geometry is in fractions of the image side; the image side stands for
`FILM_WIDTH_CM` = 40 cm (so the thorax, 0.73 of the side, is about 29 cm across, an adult's). "Side" is
the patient's side, so the patient's right lung is on the image's left, as on a real film:

================================  ============================================================================
CheXpert label (site b name)      what is drawn
================================  ============================================================================
Cardiomegaly                      heart wider than half the thorax: cardiothoracic ratio 0.56-0.68 (normal
                                  0.38-0.48); AP films magnify the heart by 1.12, as real ones do
Enlarged Cardiomediastinum        upper mediastinum 0.22-0.27 wide (normal 0.11-0.15)
Lung Opacity (Infiltration)       an ill-defined patchy haze in one zone; for CheXpert it is the umbrella
                                  label, drawn on its own only when none of its children is present
Lung Lesion (Nodule / Mass)       a round, sharp-edged opacity: nodule 2.0-2.9 cm across, mass 4.4-6.4 cm
Edema                             bilateral perihilar ("bat-wing") haze and Kerley B lines at the bases
Consolidation                     a homogeneous dense patch with dark branching air bronchograms
Pneumonia                         a cluster of 6-10 ill-defined blotches in one lower or middle zone
                                  (bronchopneumonia), drawn independently of Consolidation
Atelectasis                       a plate-like dense band in the lower zone plus an elevated hemidiaphragm
                                  (volume loss); every film gets random dome asymmetry, so the dome alone
                                  does not give it away
Pneumothorax                      a lucent rim along the apex and lateral wall with no lung markings,
                                  bounded by a thin bright visceral pleural line
Pleural Effusion (Effusion)       basal density with a meniscus blunting the costophrenic angle; on some AP
                                  films a veil-like haze over the hemithorax instead (supine)
Pleural Other (Pleural_Thick.)    a dense band along the lateral chest wall with calcified plaques
Fracture                          a posterior rib broken with a gap, a step and a bright callus
Support Devices                   1-3 of: endotracheal tube, central venous catheter, nasogastric tube,
                                  pacemaker with lead
(Emphysema, site b only)          darker lungs with sparse markings and low, flat diaphragm domes
(Fibrosis, site b only)           a reticular net of fine lines in the lower peripheral zones
(Hernia, site b only)             a round retrocardiac density with a gas bubble and air-fluid level
================================  ============================================================================

Uncertain CheXpert labels (-1, site a) are drawn at about half the conspicuity (a subtler sign).

The shift between the sites (decided before any model was trained on it):

- **Label mix and view mix.** Site a samples (view, positive, uncertain) combinations from CheXpert's
  frontal train images (300 most common combinations, 135,601 images): 88% AP, device- and
  effusion-heavy, with uncertain labels. Site b samples (view, findings) combinations from NIH
  ChestX-ray14 (150 most common, 107,418 images): 60% PA, 54% No Finding. Frequencies are in
  ``label_stats.json`` beside this module, counted from the public metadata files.
- **Label vocabulary.** Site a reports the 14 CheXpert labels (1 / 0 / -1); site b reports NIH names
  (1 / 0), evaluated on the paper's nine-label set. Site b draws findings CheXpert has no label for
  (Emphysema, Fibrosis, Hernia) and calls airspace haze "Infiltration", which the nine-label set drops.
- **Devices without labels.** As in NIH, site b does not report devices: a quarter of its AP films show an
  unlabelled tube or line.
- **Acquisition.** Site a: portable-film look — lower contrast (0.75-0.9), gamma 0.85-1.0, heavy noise
  (σ 0.025-0.045), an "L" marker in a box at the top left, "PORTABLE" on AP films. Site b: higher contrast
  (0.95-1.1), gamma 1.05-1.3, light noise (σ 0.008-0.018), smoother (downsampled) look, a bare "R"
  marker at the top right.

Generation is deterministic: sample ``i`` of ``generate(site, n, seed)`` depends only on (site, seed, i),
and every sample keeps the parameters that drew it (``.params``, JSON-serialisable).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from chexreason.data.phantom_draw import render
from chexreason.data.readers import NIH_ANNOTATED_LABELS
from chexreason.labels import CHEXPERT_LABELS, NIH_LABELS, NIH_TO_CHEXPERT
from chexreason.processes import die_with_parent

SITES = ("a", "b")
DEFAULT_SIZE = 256
FILM_WIDTH_CM = 40.0  # what one image side stands for, to state sizes in centimetres
_STATS_FILE = Path(__file__).with_name("label_stats.json")

# Findings drawn for each label, per vocabulary. "lung_opacity" is resolved against its children below.
_CHEXPERT_SIGNS = {
    "Enlarged Cardiomediastinum": "widened_mediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "opacity",
    "Lung Lesion": "lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "effusion",
    "Pleural Other": "pleural_thickening",
    "Fracture": "fracture",
    "Support Devices": "devices",
}
_NIH_SIGNS = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Effusion": "effusion",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Hernia": "hernia",
    "Infiltration": "opacity",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pleural_Thickening": "pleural_thickening",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}
_OPACITY_CHILDREN = {"Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis"}


@dataclass(frozen=True)
class PhantomSample:
    """One phantom radiograph.

    Attributes:
        id: unique and stable: ``phantom-<site>-<seed>-<index>``.
        site: "a" (CheXpert/MIMIC-like) or "b" (NIH-like).
        image: 8-bit grayscale, square.
        labels: the site's vocabulary — site a: every CheXpert label → 1.0 / 0.0 / -1.0 (uncertain);
            site b: every NIH name → 1.0 / 0.0.
        params: everything that drew the image (view, anatomy, each finding's geometry, acquisition).
    """

    id: str
    site: str
    image: Image.Image
    labels: dict[str, float]
    params: dict

    @property
    def positive_labels(self) -> tuple[str, ...]:
        return tuple(name for name, value in self.labels.items() if value == 1.0)

    def chexpert_labels(self) -> dict[str, float]:
        """Labels in the CheXpert vocabulary: site b is mapped with NIH→CheXpert, NaN where NIH cannot say."""
        if self.site == "a":
            return dict(self.labels)
        out = {label: (0.0 if label in NIH_ANNOTATED_LABELS else math.nan) for label in CHEXPERT_LABELS}
        for name in self.positive_labels:
            if NIH_TO_CHEXPERT[name] is not None:
                out[NIH_TO_CHEXPERT[name]] = 1.0
        return out


@cache
def _combos(site: str) -> tuple[list[dict], np.ndarray]:
    stats = json.loads(_STATS_FILE.read_text())["chexpert" if site == "a" else "nih"]
    combos = stats["combos"]
    counts = np.array([c["count"] for c in combos], dtype=float)
    return combos, counts / counts.sum()


def _check_site(site: str) -> None:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")


def generate(site: str, n: int, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0) -> list[PhantomSample]:
    """Generate phantoms ``start … start+n-1`` of a site; the same arguments give identical pixels.

    >>> a = generate("a", 2, seed=1, size=128)
    >>> b = generate("a", 1, seed=1, size=128, start=1)
    >>> a[1].id == b[0].id and a[1].image.tobytes() == b[0].image.tobytes()
    True
    """
    _check_site(site)
    if n < 0 or size < 64:
        raise ValueError("need n >= 0 and size >= 64")
    samples = []
    for index in range(start, start + n):
        rng = np.random.default_rng([seed, SITES.index(site), index])
        labels, params = sample_case(site, rng)
        samples.append(PhantomSample(f"phantom-{site}-{seed}-{index:06d}", site, render(params, size), labels, params))
    return samples


def _generate_args(args: tuple[str, int, int, int, int]) -> list[PhantomSample]:
    return generate(*args)


def generate_parallel(
    site: str, n: int, seed: int = 0, size: int = DEFAULT_SIZE, workers: int | None = None
) -> list[PhantomSample]:
    """`generate` in `workers` processes (default: one per core): the same films in the same order, since each
    index draws from its own random generator.

    >>> a, b = generate_parallel("b", 3, seed=2, size=64, workers=2), generate("b", 3, seed=2, size=64)
    >>> [(s.id, s.image.tobytes()) for s in a] == [(s.id, s.image.tobytes()) for s in b]
    True
    """
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    if workers == 1:
        return generate(site, n, seed, size)
    chunk = math.ceil(n / workers)
    jobs = [(site, min(chunk, n - start), seed, size, start) for start in range(0, n, chunk)]
    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        return [sample for part in pool.map(_generate_args, jobs) for sample in part]


# -------------------------------------------------------------------------------------------- sampling


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return round(float(rng.uniform(low, high)), 4)


def _side(rng: np.random.Generator) -> str:
    return "right" if rng.random() < 0.5 else "left"


def _lung_x(side: str, lateral: float) -> float:
    """Image x of a point `lateral` (0 = medial, 1 = lateral wall) across the patient's `side` lung."""
    x = 0.44 - 0.30 * lateral
    return round(x if side == "right" else 1.0 - x, 4)


def sample_case(site: str, rng: np.random.Generator) -> tuple[dict[str, float], dict]:
    """Draw a label combination from the site's real label mix, then the parameters that render it."""
    _check_site(site)
    combos, probs = _combos(site)
    combo = combos[int(rng.choice(len(combos), p=probs))]
    view = combo["view"]
    if site == "a":
        positive, uncertain = set(combo["positive"]), set(combo["uncertain"])
        labels = {
            label: 1.0 if label in positive else -1.0 if label in uncertain else 0.0 for label in CHEXPERT_LABELS
        }
        signs = {
            _CHEXPERT_SIGNS[label]: label in uncertain for label in positive | uncertain if label in _CHEXPERT_SIGNS
        }
        if "opacity" in signs and (positive | uncertain) & _OPACITY_CHILDREN:
            del signs["opacity"]  # the umbrella label is explained by its children
        if "lesion" in signs:
            signs["nodule" if rng.random() < 0.6 else "mass"] = signs.pop("lesion")
    else:
        findings = set(combo["labels"]) - {"No Finding"}
        labels = {
            name: 1.0 if name in findings or (name == "No Finding" and not findings) else 0.0 for name in NIH_LABELS
        }
        signs = {_NIH_SIGNS[name]: False for name in findings}

    params: dict = {"site": site, "view": view, "noise_seed": int(rng.integers(2**31))}
    params["anatomy"] = _sample_anatomy(rng, view, signs)
    findings_params = {}
    for sign, subtle in sorted(signs.items()):
        if sign in _FINDING_SAMPLERS:
            findings_params[sign] = {"subtle": subtle, **_FINDING_SAMPLERS[sign](rng, view)}
    if site == "b" and view == "AP" and rng.random() < 0.25:
        findings_params["devices"] = {"subtle": False, "unlabelled": True, **_sample_devices(rng, view, max_kinds=1)}
    params["findings"] = findings_params
    params["acquisition"] = _sample_acquisition(rng, site)
    return labels, params


def _sample_anatomy(rng: np.random.Generator, view: str, signs: dict[str, bool]) -> dict:
    magnification = 1.12 if view == "AP" else 1.0
    if "cardiomegaly" in signs:
        ctr = _u(rng, 0.50, 0.55) if signs["cardiomegaly"] else _u(rng, 0.56, 0.68)
    else:
        ctr = _u(rng, 0.38, 0.48)
    if "widened_mediastinum" in signs:
        mediastinum = _u(rng, 0.17, 0.20) if signs["widened_mediastinum"] else _u(rng, 0.22, 0.27)
    else:
        mediastinum = _u(rng, 0.11, 0.15)
    # Domes: the right is normally a little higher; random asymmetry so that volume loss is not the only cause.
    dome_right = 0.70 + _u(rng, -0.02, 0.02) - (0.03 if view == "AP" else 0.0)
    dome_left = dome_right + 0.025 + _u(rng, -0.015, 0.015)
    if "emphysema" in signs:
        dome_right, dome_left = dome_right + 0.06, dome_left + 0.06
    return {
        "ctr": round(min(ctr * magnification, 0.8), 4),
        "mediastinum_width": mediastinum,
        "dome_right": round(dome_right, 4),
        "dome_left": round(dome_left, 4),
        "dome_curvature": 0.03 if "emphysema" in signs else _u(rng, 0.07, 0.1),
        "body_width": _u(rng, 0.44, 0.49),
        "mediastinal_shift": _u(rng, -0.008, 0.008),
        "vessel_seed": int(rng.integers(2**31)),
    }


def _sample_effusion(rng, view):
    form = "veil" if view == "AP" and rng.random() < 0.3 else "meniscus"
    side = "both" if rng.random() < 0.35 else _side(rng)
    return {"side": side, "form": form, "height": _u(rng, 0.10, 0.22)}


def _sample_pneumothorax(rng, view):
    return {"side": _side(rng), "rim_width": _u(rng, 0.045, 0.08)}


def _sample_consolidation(rng, view):
    side = _side(rng)
    zone_y = _u(rng, 0.35, 0.42) if rng.random() < 0.35 else _u(rng, 0.5, 0.58)
    return {
        "side": side,
        "x": _lung_x(side, _u(rng, 0.35, 0.7)),
        "y": zone_y,
        "rx": _u(rng, 0.08, 0.11),
        "ry": _u(rng, 0.06, 0.09),
    }


def _sample_pneumonia(rng, view):
    side = _side(rng)
    cx, cy = _lung_x(side, _u(rng, 0.35, 0.65)), _u(rng, 0.45, 0.58)
    blobs = [
        [round(cx + _u(rng, -0.06, 0.06), 4), round(cy + _u(rng, -0.05, 0.05), 4), _u(rng, 0.015, 0.026)]
        for _ in range(int(rng.integers(6, 11)))
    ]
    return {"side": side, "blobs": blobs}


def _sample_atelectasis(rng, view):
    side = _side(rng)
    return {
        "side": side,
        "y": _u(rng, 0.52, 0.6),
        "length": _u(rng, 0.12, 0.18),
        "tilt": _u(rng, -0.03, 0.03),
        "elevation": _u(rng, 0.035, 0.05),
    }


def _sample_edema(rng, view):
    return {
        "haze": _u(rng, 0.16, 0.24),
        "kerley_lines": int(rng.integers(4, 8)),
        "line_seed": int(rng.integers(2**31)),
    }


def _sample_opacity(rng, view):
    side = _side(rng)
    cx, cy = _lung_x(side, _u(rng, 0.3, 0.7)), _u(rng, 0.3, 0.58)
    patches = [
        [round(cx + _u(rng, -0.04, 0.04), 4), round(cy + _u(rng, -0.04, 0.04), 4), _u(rng, 0.035, 0.055)]
        for _ in range(3)
    ]
    return {"side": side, "patches": patches}


def _sample_round(rng, low, high):
    side = _side(rng)
    return {
        "side": side,
        "x": _lung_x(side, _u(rng, 0.35, 0.75)),
        "y": _u(rng, 0.28, 0.55),
        "radius": _u(rng, low, high),
    }


def _sample_pleural_thickening(rng, view):
    side = _side(rng)
    y0 = _u(rng, 0.3, 0.45)
    plaques = [_u(rng, y0 + 0.02, y0 + 0.18) for _ in range(int(rng.integers(1, 4)))]
    return {
        "side": side,
        "y_start": y0,
        "y_end": round(y0 + 0.2, 4),
        "thickness": _u(rng, 0.022, 0.035),
        "plaques": plaques,
    }


def _sample_fracture(rng, view):
    return {
        "side": _side(rng),
        "rib": int(rng.integers(2, 7)),
        "position": _u(rng, 0.6, 0.8),
        "step": _u(rng, 0.012, 0.02),
    }


def _sample_devices(rng, view, max_kinds: int = 3):
    kinds = ["endotracheal_tube", "central_line", "nasogastric_tube", "pacemaker"]
    weights = np.array([0.35, 0.35, 0.2, 0.1])
    n = int(rng.integers(1, max_kinds + 1))
    chosen = sorted(rng.choice(len(kinds), size=n, replace=False, p=weights).tolist())
    return {"kinds": [kinds[i] for i in chosen], "line_side": _side(rng), "tube_tip_above_carina": _u(rng, 0.03, 0.06)}


def _sample_fibrosis(rng, view):
    return {"line_seed": int(rng.integers(2**31)), "density": _u(rng, 0.8, 1.2)}


def _sample_hernia(rng, view):
    return {"x": _u(rng, 0.47, 0.53), "y": _u(rng, 0.64, 0.69), "radius": _u(rng, 0.05, 0.07)}


_FINDING_SAMPLERS = {
    "effusion": _sample_effusion,
    "pneumothorax": _sample_pneumothorax,
    "consolidation": _sample_consolidation,
    "pneumonia": _sample_pneumonia,
    "atelectasis": _sample_atelectasis,
    "edema": _sample_edema,
    "opacity": _sample_opacity,
    "nodule": lambda rng, view: _sample_round(rng, 0.025, 0.036),
    "mass": lambda rng, view: _sample_round(rng, 0.055, 0.08),
    "pleural_thickening": _sample_pleural_thickening,
    "fracture": _sample_fracture,
    "devices": _sample_devices,
    "emphysema": lambda rng, view: {},
    "fibrosis": _sample_fibrosis,
    "hernia": _sample_hernia,
}


def _sample_acquisition(rng: np.random.Generator, site: str) -> dict:
    if site == "a":
        return {
            "contrast": _u(rng, 0.75, 0.9),
            "gamma": _u(rng, 0.85, 1.0),
            "offset": _u(rng, 0.02, 0.08),
            "noise": _u(rng, 0.025, 0.045),
            "blur": 0.5,
            "marker": "L",
            "marker_box": True,
            "marker_corner": "left",
        }
    return {
        "contrast": _u(rng, 0.95, 1.1),
        "gamma": _u(rng, 1.05, 1.3),
        "offset": _u(rng, -0.02, 0.02),
        "noise": _u(rng, 0.008, 0.018),
        "blur": 1.0,
        "marker": "R",
        "marker_box": False,
        "marker_corner": "right",
    }
