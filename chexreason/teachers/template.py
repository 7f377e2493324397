"""The offline template teacher: writes SFT reasoning traces without any model or network.

For phantoms it cites the real generating evidence (the cardiothoracic ratio the heart was drawn with,
the side and height of an effusion, a nodule's size in centimetres…). For real images, which it cannot
see, it writes a systematic review consistent with the ground-truth labels. Wording is varied with a
generator seeded by the image id, so traces are reproducible. It never says that it was given the labels.

A finding drawn on a phantom but absent from the labels (an uncertain label under the u-zeros policy) is
described as equivocal and not called, so the trace always agrees with its label set.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from chexreason.data.phantom import FILM_WIDTH_CM
from chexreason.prompts import AnswerFormat
from chexreason.teachers.base import TeacherCase


def _pick(rng: random.Random, *variants: str) -> str:
    return rng.choice(variants)


def _cm(fraction: float) -> str:
    return f"{fraction * FILM_WIDTH_CM:.1f} cm"


def _side_zone(f: dict) -> str:
    zone = "upper" if f.get("y", 0.5) < 0.45 else "lower"
    return f"{f['side']} {zone} zone"


# Each describer returns (region, sentence) for one finding; `f` is the phantom's finding params or None.
def _cardiomegaly(rng, f, anatomy, view):
    ratio = f" (cardiothoracic ratio about {anatomy['ctr']:.2f})" if anatomy else ""
    return "heart", _pick(rng, f"The cardiac silhouette is enlarged{ratio}.", f"The heart is enlarged{ratio}.")


def _mediastinum(rng, f, anatomy, view):
    width = f", about {_cm(anatomy['mediastinum_width'])} across" if anatomy else ""
    return "mediastinum", _pick(
        rng, f"The upper mediastinum is widened{width}.", f"The cardiomediastinal silhouette is enlarged{width}."
    )


def _effusion(rng, f, anatomy, view):
    if f and f["form"] == "veil":
        return (
            "pleura",
            f"A veil-like haze over the {f['side']} hemithorax suggests layering fluid on this supine film.",
        )
    where = f"{f['side']} costophrenic angle" if f and f["side"] != "both" else "costophrenic angles"
    if f and f["side"] == "both":
        where = "both costophrenic angles"
    return "pleura", _pick(
        rng,
        f"A basal density with a meniscus blunts the {where}.",
        f"Homogeneous basal opacity with a meniscus obscures the {where}.",
    )


def _pneumothorax(rng, f, anatomy, view):
    side = f"{f['side']} " if f else ""
    depth = f", about {_cm(f['rim_width'])} deep," if f else ""
    return "pleura", _pick(
        rng,
        f"A thin visceral pleural line runs along the {side}apex and lateral wall{depth} "
        "with no lung markings beyond it.",
        f"There is a {side}pleural line with absent lung markings peripheral to it{depth} at the apex.",
    )


def _consolidation(rng, f, anatomy, view):
    where = f" in the {_side_zone(f)}" if f else ""
    return "lungs", _pick(
        rng,
        f"Homogeneous airspace opacity{where} contains air bronchograms, without volume loss.",
        f"There is dense consolidation{where} with air bronchograms.",
    )


def _pneumonia(rng, f, anatomy, view):
    where = f" in the {f['side']} lower zone" if f else ""
    return "lungs", _pick(
        rng,
        f"Patchy, ill-defined airspace opacities cluster{where}, in a pattern typical of infection.",
        f"Multifocal blotchy opacities{where} suggest bronchopneumonia.",
    )


def _atelectasis(rng, f, anatomy, view):
    side = f"{f['side']} " if f else ""
    return "lungs", _pick(
        rng,
        f"A plate-like linear opacity at the {side}base with elevation of the {side}hemidiaphragm "
        "indicates volume loss.",
        f"Band-like opacity in the {side}lower zone with an elevated {side}hemidiaphragm: atelectasis.",
    )


def _edema(rng, f, anatomy, view):
    return "lungs", _pick(
        rng,
        "Bilateral perihilar haziness with Kerley B lines at the bases indicates interstitial edema.",
        "There is a bat-wing pattern of perihilar opacity with septal lines at both bases.",
    )


def _opacity(rng, f, anatomy, view):
    where = f" in the {f['side']} lung" if f else ""
    return "lungs", _pick(
        rng, f"There is an ill-defined hazy opacity{where}.", f"A patchy airspace opacity is seen{where}."
    )


def _lesion(rng, f, anatomy, view):
    if f is None:
        return "lungs", _pick(
            rng, "A round, well-defined pulmonary opacity is present.", "There is a focal lung lesion."
        )
    size = 2 * f["radius"]
    kind = "mass" if size * FILM_WIDTH_CM >= 3.0 else "nodule"
    return "lungs", f"A round, well-defined {kind} about {_cm(size)} across projects over the {_side_zone(f)}."


def _pleural_other(rng, f, anatomy, view):
    side = f"{f['side']} " if f else ""
    plaques = f" with {len(f['plaques'])} calcified plaque{'s' if len(f['plaques']) > 1 else ''}" if f else ""
    return "pleura", f"Pleural thickening lines the {side}lateral chest wall{plaques}."


def _fracture(rng, f, anatomy, view):
    if f is None:
        return "bones", "A rib shows a cortical break."
    ordinal = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"][f["rib"]]
    return "bones", f"The {f['side']} {ordinal} posterior rib shows a cortical break with a step and callus."


def _devices(rng, f, anatomy, view):
    if f is None:
        return "devices", _pick(rng, "Support devices are in place.", "Lines and tubes are present.")
    parts = {
        "endotracheal_tube": (
            f"an endotracheal tube with its tip about {_cm(f['tube_tip_above_carina'])} above the carina"
        ),
        "central_line": f"a {f['line_side']}-sided central venous catheter ending in the superior vena cava",
        "nasogastric_tube": "a nasogastric tube coursing below the diaphragm into the stomach",
        "pacemaker": "a left chest wall pacemaker with its lead toward the right ventricle",
    }
    items = [parts[kind] for kind in f["kinds"]]
    listing = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return "devices", f"There is {listing}."


_DESCRIBERS = {
    "Cardiomegaly": (_cardiomegaly, "cardiomegaly"),
    "Enlarged Cardiomediastinum": (_mediastinum, "widened_mediastinum"),
    "Pleural Effusion": (_effusion, "effusion"),
    "Pneumothorax": (_pneumothorax, "pneumothorax"),
    "Consolidation": (_consolidation, "consolidation"),
    "Pneumonia": (_pneumonia, "pneumonia"),
    "Atelectasis": (_atelectasis, "atelectasis"),
    "Edema": (_edema, "edema"),
    "Lung Opacity": (_opacity, "opacity"),
    "Lung Lesion": (_lesion, ("nodule", "mass")),
    "Pleural Other": (_pleural_other, "pleural_thickening"),
    "Fracture": (_fracture, "fracture"),
    "Support Devices": (_devices, "devices"),
}

# What a reader says about a region with nothing abnormal in it.
_NORMAL = {
    "devices": ("No lines or tubes are seen.", "There are no support devices."),
    "mediastinum": ("The mediastinum is not widened.", "Mediastinal contours are normal."),
    "heart": ("Heart size is normal.", "The cardiac silhouette is not enlarged."),
    "lungs": ("The lungs are clear.", "No focal airspace opacity, nodule or edema."),
    "pleura": (
        "No pleural effusion or pneumothorax.",
        "The costophrenic angles are sharp and there is no pneumothorax.",
    ),
    "bones": ("No acute osseous abnormality.", "The ribs are intact."),
}
_REGIONS = ("devices", "mediastinum", "heart", "lungs", "right lung", "left lung", "pleura", "bones")


def _finding_params(label: str, case: TeacherCase) -> dict | None:
    if not case.params:
        return None
    signs = _DESCRIBERS[label][1]
    for sign in (signs,) if isinstance(signs, str) else signs:
        if sign in case.params["findings"]:
            return case.params["findings"][sign]
    return None


def _describe(label: str, case: TeacherCase, rng: random.Random) -> tuple[str, str]:
    """(region, sentence) for a finding; one-sided lung findings go to that lung (step 6 or 7 of Reasoning A)."""
    f = _finding_params(label, case)
    region, sentence = _DESCRIBERS[label][0](rng, f, case.params["anatomy"] if case.params else None, case.view)
    if region == "lungs" and f and f.get("side") in ("right", "left"):
        region = f"{f['side']} lung"
    return region, sentence


def _observations(case: TeacherCase, rng: random.Random) -> dict[str, list[str]]:
    """Sentences by region: each labelled finding, equivocal unlabelled phantom signs, normal regions."""
    by_region: dict[str, list[str]] = {region: [] for region in _REGIONS}
    for label in case.labels:
        if label in _DESCRIBERS:
            region, sentence = _describe(label, case, rng)
            by_region[region].append(sentence)
    if case.params:
        for label in _DESCRIBERS:
            f = _finding_params(label, case)
            if label not in case.labels and f is not None and f.get("subtle"):
                region, _ = _describe(label, case, rng)
                by_region[region].append(
                    f"A subtle, equivocal sign of {label.lower()} is not convincing enough to call."
                )
        if "Cardiomegaly" not in case.labels:
            by_region["heart"].append(
                f"Heart size is normal (cardiothoracic ratio about {case.params['anatomy']['ctr']:.2f})."
            )
    for region, normal in _NORMAL.items():
        lungs_seen = region == "lungs" and (by_region["right lung"] or by_region["left lung"])
        if not by_region[region] and not lungs_seen:
            by_region[region].append(_pick(rng, *normal))
    return by_region


def _is_normal(sentence: str) -> bool:
    return any(sentence in variants for variants in _NORMAL.values()) or sentence.startswith("Heart size is normal")


def _technique(case: TeacherCase, rng: random.Random) -> str:
    if case.view == "AP":
        return _pick(rng, "AP film; the heart is magnified on this projection.", "Portable AP view.")
    if case.view == "PA":
        return _pick(rng, "PA film with adequate inspiration.", "Upright PA view.")
    return "Frontal view."


def _conclusion(case: TeacherCase) -> str:
    findings = [label for label in case.labels if label != "No Finding"]
    if not findings:
        return "No acute cardiopulmonary abnormality."
    return "Overall: " + ", ".join(label.lower() for label in findings) + "."


def _free(case, rng, obs):
    sentences = [s for region in _REGIONS for s in obs[region]]
    abnormal = [s for s in sentences if not _is_normal(s)]
    normal = [s for s in sentences if _is_normal(s)]
    return " ".join([_technique(case, rng), *abnormal, *normal[:3], _conclusion(case)])


def _narrative(case, rng, obs):
    opening = _pick(rng, "Reading this film as a whole:", "Looking at the radiograph:", "On review of the image:")
    body = " ".join(s for region in _REGIONS for s in obs[region])
    closing = _pick(rng, "Taken together,", "Putting the evidence together,", "In summary,")
    conclusion = _conclusion(case)
    return f"{opening} {_technique(case, rng)} {body} {closing} {conclusion[0].lower()}{conclusion[1:]}"


def _checklist(case, rng, obs):
    steps = [
        _technique(case, rng),
        " ".join(obs["devices"]),
        _pick(rng, "The trachea is midline.", "Trachea central."),
        " ".join(obs["mediastinum"]),
        " ".join(obs["heart"]),
        " ".join(obs["right lung"] + obs["lungs"]) or "Right lung clear.",
        " ".join(obs["left lung"]) or ("Left lung clear." if obs["right lung"] else "As for the right."),
        " ".join(obs["pleura"]),
        _pick(rng, "Diaphragm outlines are visible.", "The hemidiaphragms are outlined."),
        " ".join(obs["bones"]),
        _pick(rng, "Soft tissues unremarkable.", "No soft tissue abnormality."),
        _conclusion(case),
    ]
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


_STYLES = {"free_reasoning": _free, "reasoning_narrative": _narrative, "reasoning_a": _checklist}


class TemplateTeacher:
    """Offline teacher: reproducible, evidence-citing traces for phantoms, consistent reviews for real images.

    >>> from chexreason.prompts import ANSWER_FORMATS
    >>> case = TeacherCase("x1", ("No Finding",), view="PA")
    >>> TemplateTeacher().write([case], ANSWER_FORMATS["free_reasoning"])[0].startswith(("PA film", "Upright PA"))
    True
    """

    name = "template"

    def write(self, cases: Sequence[TeacherCase], answer_format: AnswerFormat) -> list[str]:
        if answer_format.trace_style is None:
            return ["" for _ in cases]  # Only Label: no reasoning
        style = _STYLES.get(answer_format.key, _free)
        out = []
        for case in cases:
            rng = random.Random(hashlib.sha256(case.id.encode()).digest())
            out.append(style(case, rng, _observations(case, rng)))
        return out
