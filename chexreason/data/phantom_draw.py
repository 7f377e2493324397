"""Rendering of phantom radiographs from their parameters (see `chexreason.data.phantom` for the design).

The image is built as an attenuation map ``A`` in [0, 1] (bright = dense, as on a film): body soft tissue,
dark lungs with vessel markings, findings inside the lungs, then the mediastinum and heart over them,
bones, devices, and finally the site's acquisition (contrast, gamma, blur, noise, markers). All
coordinates are fractions of the image side, so the same parameters render at any size.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

_CARINA_Y = 0.36
_LUNG_CX = {"right": 0.30, "left": 0.70}  # image x of each lung's centre: the patient's right is on the image's left
_LUNG_CY, _LUNG_RX, _LUNG_RY, _LUNG_P = 0.44, 0.165, 0.33, 2.5


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _soft_ellipse(x, y, cx, cy, rx, ry, edge=0.01):
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) / edge + 0.5, 0.0, 1.0)


def _blend(a, target, weight):
    return a + (target - a) * np.clip(weight, 0.0, 1.0)


class _Canvas:
    """Lines and shapes drawn with PIL (fast, anti-aliased by a blur) in fractional coordinates."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = Image.new("L", (size, size))
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, points):
        return [(x * self.size, y * self.size) for x, y in points]

    def line(self, points, width: float, value: float) -> None:
        self.draw.line(
            self._xy(points), fill=round(255 * value), width=max(1, round(width * self.size)), joint="curve"
        )

    def ellipse(self, cx, cy, rx, ry, value: float) -> None:
        self.draw.ellipse(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), fill=round(255 * value))

    def polygon(self, points, value: float) -> None:
        self.draw.polygon(self._xy(points), fill=round(255 * value))

    def array(self, blur: float = 0.0) -> np.ndarray:
        out = np.asarray(self.image, dtype=np.float32) / 255.0
        return ndimage.gaussian_filter(out, blur * self.size) if blur else out


def _lung_edge_x(side: str, y: float) -> float:
    """Image x of the lateral wall of a lung at height y."""
    t = min(abs(y - _LUNG_CY) / _LUNG_RY, 1.0)
    half = _LUNG_RX * (1.0 - t**_LUNG_P) ** (1.0 / _LUNG_P)
    return _LUNG_CX[side] - half if side == "right" else _LUNG_CX[side] + half


def _dome_y(x, side: str, dome: float, curvature: float):
    """The diaphragm dome under a lung: highest mid-hemithorax, falling to the costophrenic angle."""
    return dome + curvature * ((x - _LUNG_CX[side]) / _LUNG_RX) ** 2


class _Anatomy:
    """Geometry of one film, shared by the drawing steps."""

    def __init__(self, params: dict, size: int) -> None:
        an, findings = params["anatomy"], params["findings"]
        self.size, self.view = size, params["view"]
        self.x, self.y = _grid(size)
        self.domes = {"right": an["dome_right"], "left": an["dome_left"]}
        shift = an["mediastinal_shift"]
        if "atelectasis" in findings:  # volume loss: the dome rises and the mediastinum moves toward the side
            at = findings["atelectasis"]
            k = _conspicuity(at)
            self.domes[at["side"]] -= at["elevation"] * k
            shift += (-0.012 if at["side"] == "right" else 0.012) * k
        self.mid = 0.5 + shift
        self.curvature = an["dome_curvature"]
        self.ctr = an["ctr"]
        self.mediastinum = an["mediastinum_width"]
        # The trunk: a rounded box (superellipse) rather than an ellipse, so the shoulders fill the top corners.
        trunk = (np.abs(self.x - 0.5) / an["body_width"]) ** 3.5 + (np.abs(self.y - 0.6) / 0.66) ** 3.5
        self.body = np.clip((1.0 - trunk) * 8.0, 0.0, 1.0)
        self.lungs = {side: self._lung(side) for side in ("right", "left")}
        below = np.where(
            self.x < 0.5,
            self.y - _dome_y(self.x, "right", self.domes["right"], self.curvature),
            self.y - _dome_y(self.x, "left", self.domes["left"], self.curvature),
        )
        self.abdomen = self.body * np.clip(below * size / 2.0 + 0.5, 0.0, 1.0)

    def _lung(self, side: str) -> np.ndarray:
        x, y = self.x, self.y
        shape = (np.abs(x - _LUNG_CX[side]) / _LUNG_RX) ** _LUNG_P + (np.abs(y - _LUNG_CY) / _LUNG_RY) ** _LUNG_P
        inside = (shape < 1.0) & (y < _dome_y(x, side, self.domes[side], self.curvature))
        medial = (
            x < self.mid - self.mediastinum / 2 + 0.01
            if side == "right"
            else x > self.mid + self.mediastinum / 2 - 0.01
        )
        return ndimage.gaussian_filter((inside & medial).astype(np.float32), 0.004 * self.size)

    def sides(self, side: str) -> tuple[str, ...]:
        return ("right", "left") if side == "both" else (side,)

    def inside_distance(self, side: str) -> np.ndarray:
        """Distance (fraction of the side) from each lung pixel to the lung's edge."""
        return ndimage.distance_transform_edt(self.lungs[side] > 0.5) / self.size


def _conspicuity(finding: dict) -> float:
    return 0.55 if finding.get("subtle") else 1.0


# ------------------------------------------------------------------------------------------ drawing


def _draw_vessels(an: _Anatomy, seed: int, strength: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    canvas = _Canvas(an.size)
    for direction in (-1.0, 1.0):  # the patient's right hilum (image left), then the left
        hilum = (an.mid + direction * 0.085, 0.45)
        for _ in range(14):
            angle = rng.uniform(-0.45, 0.45) * math.pi + (math.pi if direction < 0 else 0.0)
            angle += rng.uniform(-0.35, 0.35)
            length = rng.uniform(0.12, 0.24)
            end = (hilum[0] + math.cos(angle) * length, hilum[1] + math.sin(angle) * length * 1.2)
            canvas.line([hilum, end], 0.006, 0.7)
            for _ in range(2):
                t = rng.uniform(0.35, 0.8)
                start = (hilum[0] + (end[0] - hilum[0]) * t, hilum[1] + (end[1] - hilum[1]) * t)
                branch = angle + rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)
                canvas.line(
                    [start, (start[0] + math.cos(branch) * length * 0.4, start[1] + math.sin(branch) * length * 0.5)],
                    0.003,
                    0.5,
                )
    return canvas.array(blur=0.003) * strength


def _draw_lung_findings(a: np.ndarray, an: _Anatomy, findings: dict) -> np.ndarray:
    x, y, size = an.x, an.y, an.size
    lungs = an.lungs["right"] + an.lungs["left"]

    if "edema" in findings:
        f = findings["edema"]
        k = _conspicuity(f)
        haze = sum(np.exp(-(((x - hx) / 0.09) ** 2 + ((y - 0.46) / 0.12) ** 2)) for hx in (an.mid - 0.1, an.mid + 0.1))
        a = a + f["haze"] * k * haze * lungs
        rng, canvas = np.random.default_rng(f["line_seed"]), _Canvas(size)
        for side in ("right", "left"):
            for _ in range(f["kerley_lines"]):
                ly = an.domes[side] - rng.uniform(0.02, 0.1)
                edge = _lung_edge_x(side, ly)
                inward = 0.035 if side == "right" else -0.035
                canvas.line([(edge + inward * 0.15, ly), (edge + inward, ly)], 0.004, 1.0)
        a = a + 0.16 * k * canvas.array(blur=0.002) * lungs

    if "opacity" in findings:
        f = findings["opacity"]
        patch = sum(np.exp(-(((x - px) ** 2 + (y - py) ** 2) / (2 * r * r))) for px, py, r in f["patches"])
        a = a + 0.2 * _conspicuity(f) * np.clip(patch, 0, 1) * an.lungs[f["side"]]

    if "pneumonia" in findings:
        f = findings["pneumonia"]
        blobs = sum(np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / (2 * r * r))) for bx, by, r in f["blobs"])
        a = _blend(a, 0.5, 0.85 * _conspicuity(f) * np.clip(1.5 * blobs, 0, 1) * an.lungs[f["side"]])

    if "consolidation" in findings:
        f = findings["consolidation"]
        k = _conspicuity(f)
        patch = _soft_ellipse(x, y, f["x"], f["y"], f["rx"], f["ry"], edge=0.012) * an.lungs[f["side"]]
        a = _blend(a, 0.5, 0.85 * k * patch)
        canvas = _Canvas(size)
        inward = 1.0 if f["side"] == "right" else -1.0  # bronchi run from the hilum outward
        start = (f["x"] + inward * f["rx"] * 0.8, f["y"])
        for dy in (-0.5, 0.0, 0.5):
            end = (f["x"] - inward * f["rx"] * 0.6, f["y"] + dy * f["ry"])
            canvas.line([start, end], 0.005, 1.0)
        a = a - 0.22 * k * canvas.array(blur=0.002) * patch

    if "atelectasis" in findings:
        f = findings["atelectasis"]
        side, cx = f["side"], _LUNG_CX[f["side"]]
        canvas = _Canvas(size)
        canvas.line(
            [(cx - f["length"] / 2, f["y"] - f["tilt"]), (cx + f["length"] / 2, f["y"] + f["tilt"])], 0.022, 1.0
        )
        a = _blend(a, 0.5, 0.85 * _conspicuity(f) * canvas.array(blur=0.005) * an.lungs[side])

    for kind, lobes in (("nodule", 1), ("mass", 3)):
        if kind in findings:
            f = findings[kind]
            r = f["radius"]
            disc = sum(
                _soft_ellipse(x, y, f["x"] + dx * r * 0.35, f["y"] + dy * r * 0.35, r * 0.85, r * 0.85, edge=0.004)
                for dx, dy in ((0, 0), (1, 0.5), (-0.6, 0.8))[:lobes]
            )
            a = _blend(a, 0.6, 0.9 * _conspicuity(f) * np.clip(disc, 0, 1))

    if "fibrosis" in findings:
        f = findings["fibrosis"]
        rng, canvas = np.random.default_rng(f["line_seed"]), _Canvas(size)
        for side in ("right", "left"):
            for _ in range(70):
                ly = rng.uniform(0.45, an.domes[side] - 0.01)
                lx = _lung_edge_x(side, ly) + (1 if side == "right" else -1) * rng.uniform(0.0, 0.09)
                angle, length = rng.uniform(0, math.pi), rng.uniform(0.015, 0.03)
                canvas.line([(lx, ly), (lx + math.cos(angle) * length, ly + math.sin(angle) * length)], 0.003, 1.0)
        a = a + 0.22 * f["density"] * canvas.array(blur=0.0015) * lungs

    if "effusion" in findings:
        f = findings["effusion"]
        k = _conspicuity(f)
        for side in an.sides(f["side"]):
            lateral = np.clip(np.abs(x - an.mid) / 0.38, 0.0, 1.0)
            if f["form"] == "veil":  # supine: fluid layers posteriorly, a graded haze over the hemithorax
                grade = np.clip((y - 0.15) / 0.55, 0.0, 1.0)
                a = a + 0.15 * k * grade * an.lungs[side]
                continue
            surface = an.domes[side] + an.curvature - f["height"] * k * (0.35 + 0.9 * lateral**2)  # meniscus
            fluid = np.clip((y - surface) * size / 1.5, 0.0, 1.0)
            hemithorax = (np.abs(x - _LUNG_CX[side]) < _LUNG_RX + 0.01) & (y < an.domes[side] + an.curvature + 0.05)
            a = _blend(a, 0.47, 0.95 * fluid * hemithorax * an.body)

    if "pleural_thickening" in findings:
        f = findings["pleural_thickening"]
        side, k = f["side"], _conspicuity(f)
        depth = an.inside_distance(side)
        lateral = (x < _LUNG_CX[side]) if side == "right" else (x > _LUNG_CX[side])
        band = (depth > 0) & (depth < f["thickness"]) & lateral & (y > f["y_start"]) & (y < f["y_end"])
        a = _blend(a, 0.55, 0.9 * k * ndimage.gaussian_filter(band.astype(np.float32), 0.003 * size))
        canvas = _Canvas(size)
        for py in f["plaques"]:
            canvas.ellipse(_lung_edge_x(side, py) + (0.012 if side == "right" else -0.012), py, 0.012, 0.024, 1.0)
        a = a + 0.4 * k * canvas.array(blur=0.002)

    if "pneumothorax" in findings:
        f = findings["pneumothorax"]
        side, k = f["side"], _conspicuity(f)
        width = f["rim_width"] * k
        depth = an.inside_distance(side)
        lateral = (x < _LUNG_CX[side] + 0.04) if side == "right" else (x > _LUNG_CX[side] - 0.04)
        region = (depth > 0) & (lateral | (y < 0.22)) & (y < 0.62)
        rim = region & (depth < width)
        a = _blend(a, 0.0, ndimage.gaussian_filter(rim.astype(np.float32), 0.002 * size))  # no lung markings
        pleural_line = region & (np.abs(depth - width) < 0.0045)
        a = a + 0.3 * ndimage.gaussian_filter(pleural_line.astype(np.float32), 0.0015 * size)
    return a


def _draw_bones(an: _Anatomy, fracture: dict | None) -> np.ndarray:
    canvas, callus = _Canvas(an.size), _Canvas(an.size)
    for side, direction in (("right", -1.0), ("left", 1.0)):
        for rib in range(10):
            y0 = 0.13 + 0.058 * rib
            ts = np.linspace(0.0, 1.0, 14)

            def point(t, step=0.0, y0=y0, direction=direction):
                return (
                    an.mid + direction * (0.035 + 0.37 * t),
                    y0 - 0.035 * math.sin(math.pi * t * 0.9) + 0.09 * t * t + step,
                )

            if fracture and fracture["side"] == side and fracture["rib"] == rib:
                t0, gap = fracture["position"], 0.035
                canvas.line([point(t) for t in ts if t < t0 - gap], 0.014, 0.55)
                canvas.line([point(t, fracture["step"]) for t in ts if t > t0 + gap], 0.014, 0.55)
                cx, cy = point(t0, fracture["step"] / 2)
                callus.ellipse(cx, cy, 0.022, 0.018, 1.0)
            else:
                canvas.line([point(t) for t in ts], 0.014, 0.55)
            if rib < 6:  # anterior ribs: fainter, running down and in from the lateral wall
                lateral = an.mid + direction * 0.37
                canvas.line(
                    [
                        (lateral, y0 + 0.06),
                        (an.mid + direction * 0.2, y0 + 0.14),
                        (an.mid + direction * 0.11, y0 + 0.19),
                    ],
                    0.011,
                    0.25,
                )
        clavicle_y = (0.15, 0.085) if an.view == "AP" else (0.175, 0.125)
        canvas.line(
            [
                (an.mid + direction * 0.05, clavicle_y[0]),
                (an.mid + direction * 0.2, clavicle_y[0] - 0.02),
                (an.mid + direction * 0.33, clavicle_y[1]),
            ],
            0.026,
            1.0,
        )
        if an.view == "AP":  # scapulae project over the lateral lungs on AP films
            canvas.polygon(
                [(0.5 + direction * 0.30, 0.13), (0.5 + direction * 0.43, 0.15), (0.5 + direction * 0.37, 0.46)], 0.3
            )
    bones = canvas.array(blur=0.003) * 0.24
    spine = np.clip((0.035 - np.abs(an.x - an.mid)) * an.size / 2.0, 0.0, 1.0)
    endplates = 0.5 + 0.5 * np.cos(2 * math.pi * an.y / 0.045)
    bones = bones + spine * (0.09 + 0.03 * endplates)
    if fracture:
        bones = bones + 0.4 * callus.array(blur=0.003)
    return bones * an.body * (1.0 - 0.6 * an.abdomen)


def _draw_devices(an: _Anatomy, f: dict) -> np.ndarray:
    canvas, m = _Canvas(an.size), an.mid
    if "endotracheal_tube" in f["kinds"]:
        tip = _CARINA_Y - f["tube_tip_above_carina"]
        for dx in (-0.009, 0.009):
            canvas.line([(m + dx, 0.0), (m + dx, tip)], 0.004, 0.9)
    if "central_line" in f["kinds"]:
        d = -1.0 if f["line_side"] == "right" else 1.0
        canvas.line(
            [(0.5 + d * 0.31, 0.12), (0.5 + d * 0.17, 0.17), (m + d * 0.035, 0.22), (m + d * 0.03, 0.42)], 0.005, 1.0
        )
    if "nasogastric_tube" in f["kinds"]:
        stomach = an.domes["left"] + an.curvature + 0.06
        canvas.line(
            [(m + 0.006, 0.0), (m + 0.01, 0.5), (m + 0.04, an.domes["left"]), (0.64, stomach), (0.6, stomach + 0.03)],
            0.005,
            0.9,
        )
    if "pacemaker" in f["kinds"]:
        canvas.polygon([(0.70, 0.14), (0.78, 0.14), (0.78, 0.195), (0.70, 0.195)], 1.0)
        canvas.line([(0.72, 0.18), (m + 0.07, 0.3), (m + 0.05, 0.45), (m + 0.12, 0.66)], 0.004, 1.0)
    return canvas.array(blur=0.0015) * 0.55


def _acquire(a: np.ndarray, params: dict, size: int) -> Image.Image:
    acq = params["acquisition"]
    rng = np.random.default_rng(params["noise_seed"])
    image = np.clip(acq["offset"] + acq["contrast"] * np.clip(a, 0.0, 1.0), 0.0, 1.0) ** acq["gamma"]
    image = ndimage.gaussian_filter(image, acq["blur"] * size / 256)
    image = image + rng.normal(0.0, acq["noise"], image.shape)
    out = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    _draw_markers(out, params, acq)
    return out


@cache
def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def _draw_markers(image: Image.Image, params: dict, acq: dict) -> None:
    """Burned-in side markers, as technologists place them: a site habit, not anatomy."""
    size = image.size[0]
    draw, font = ImageDraw.Draw(image), _font(max(8, size // 16))
    x = round(size * 0.05) if acq["marker_corner"] == "left" else round(size * 0.88)
    y = round(size * 0.04)
    if acq["marker_box"]:
        box = font.getbbox(acq["marker"])
        pad = max(1, size // 100)
        draw.rectangle(
            [x - pad, y - pad + box[1], x + box[2] + pad, y + box[3] + pad], outline=235, width=max(1, size // 200)
        )
    draw.text((x, y), acq["marker"], fill=235, font=font)
    if params["site"] == "a" and params["view"] == "AP":
        small = _font(max(6, size // 26))
        draw.text((round(size * 0.62), round(size * 0.04)), "PORTABLE", fill=220, font=small)


def render(params: dict, size: int) -> Image.Image:
    """Draw the film described by `params` (from `sample_case`) at `size` × `size` pixels."""
    an = _Anatomy(params, size)
    findings = params["findings"]
    a = 0.03 + 0.40 * an.body
    lungs = an.lungs["right"] + an.lungs["left"]
    emphysema = "emphysema" in findings
    a = _blend(a, 0.09 if emphysema else 0.13, lungs)
    a = a + _draw_vessels(an, params["anatomy"]["vessel_seed"], 0.05 if emphysema else 0.1) * lungs
    a = _draw_lung_findings(a, an, findings)

    # Mediastinum, heart and abdomen lie over the lungs' medial and lower edges.
    mediastinum = (
        np.clip((an.mediastinum / 2 - np.abs(an.x - an.mid)) * an.size / 2 + 0.5, 0, 1) * (an.y < 0.62) * (an.y > 0.02)
    )
    mediastinum = np.maximum(mediastinum, _soft_ellipse(an.x, an.y, an.mid + an.mediastinum / 2, 0.3, 0.03, 0.03))
    heart_width = an.ctr * 0.73  # internal thoracic width: lateral lung walls at 0.135 and 0.865
    left, right = an.mid - 0.38 * heart_width, an.mid + 0.62 * heart_width
    heart = _soft_ellipse(
        an.x, an.y, (left + right) / 2, 0.61, heart_width / 2, 0.13 + 0.1 * (an.ctr - 0.4), edge=0.006
    )
    a = _blend(a, 0.62, np.maximum(ndimage.gaussian_filter(mediastinum, 0.004 * an.size), heart))
    a = _blend(a, 0.54, an.abdomen)
    if "hernia" in findings:
        f = findings["hernia"]
        a = a + 0.14 * _soft_ellipse(an.x, an.y, f["x"], f["y"], f["radius"], f["radius"], edge=0.005)
        gas = _soft_ellipse(an.x, an.y, f["x"], f["y"], f["radius"] * 0.8, f["radius"] * 0.8, edge=0.004) * (
            an.y < f["y"] - 0.15 * f["radius"]
        )
        a = a - 0.28 * gas  # a gas bubble above an air-fluid level
    gastric = _soft_ellipse(an.x, an.y, 0.65, an.domes["left"] + an.curvature + 0.045, 0.045, 0.025, edge=0.006)
    a = a - 0.28 * gastric * an.abdomen
    trachea = np.clip((0.017 - np.abs(an.x - an.mid)) * an.size / 2 + 0.5, 0, 1) * (an.y > 0.03) * (an.y < _CARINA_Y)
    a = a - 0.2 * ndimage.gaussian_filter(trachea.astype(np.float32), 0.003 * an.size)

    a = a + _draw_bones(an, findings.get("fracture"))
    if "devices" in findings:
        a = a + _draw_devices(an, findings["devices"])
    return _acquire(a, params, size)
