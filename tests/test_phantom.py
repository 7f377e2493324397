"""The two-site phantom benchmark: deterministic, realistic mixes, every finding visible."""

import copy
import json
import math

import numpy as np
import pytest
from PIL import Image

from chexreason.data.phantom import SITES, generate, render, sample_case
from chexreason.labels import CHEXPERT_LABELS, NIH_LABELS


@pytest.fixture(scope="module")
def samples():
    return {site: generate(site, 300, seed=11, size=96) for site in SITES}


def test_deterministic_and_index_stable():
    first = generate("b", 3, seed=5, size=96)
    again = generate("b", 3, seed=5, size=96)
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in again]
    # Sample i depends only on (site, seed, i): a later window reproduces the same film.
    assert generate("b", 1, seed=5, size=96, start=2)[0].image.tobytes() == first[2].image.tobytes()
    assert generate("b", 1, seed=6, size=96)[0].image.tobytes() != first[0].image.tobytes()


def test_images_are_grayscale_squares(samples):
    image = samples["a"][0].image
    assert image.mode == "L" and image.size == (96, 96)
    assert np.asarray(image).std() > 20  # a film, not a flat field


def test_vocabularies(samples):
    for sample in samples["a"][:20]:
        assert list(sample.labels) == list(CHEXPERT_LABELS)
        assert set(sample.labels.values()) <= {1.0, 0.0, -1.0}
    for sample in samples["b"][:20]:
        assert list(sample.labels) == list(NIH_LABELS)
        assert set(sample.labels.values()) <= {1.0, 0.0}
        chexpert = sample.chexpert_labels()
        assert math.isnan(chexpert["Support Devices"])  # NIH does not annotate devices
        assert not math.isnan(chexpert["Pleural Other"])  # Pleural_Thickening maps to it


def test_site_shift_in_views_and_labels(samples):
    def share(site, predicate):
        return sum(map(predicate, samples[site])) / len(samples[site])

    # Real mixes: CheXpert frontal train is ~88% AP, NIH ~40% AP.
    assert share("a", lambda s: s.params["view"] == "AP") > 0.75
    assert share("b", lambda s: s.params["view"] == "AP") < 0.55
    # NIH is normal-heavy (54% No Finding), CheXpert device-heavy (~59% Support Devices).
    assert share("b", lambda s: s.labels["No Finding"] == 1.0) > 0.4
    assert share("a", lambda s: s.labels["Support Devices"] == 1.0) > 0.4
    assert share("a", lambda s: -1.0 in s.labels.values()) > 0.1  # uncertain labels exist on site a only
    assert samples["a"][0].params["acquisition"]["noise"] > samples["b"][0].params["acquisition"]["noise"]


def test_params_are_json_and_rerender_the_same_image(samples):
    sample = samples["a"][3]
    params = json.loads(json.dumps(sample.params))
    assert render(params, 96).tobytes() == sample.image.tobytes()


def test_lung_opacity_is_explained_by_its_children():
    for i in range(400):
        labels, params = sample_case("a", np.random.default_rng([1, 0, i]))
        children = {"Edema", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion"}
        if labels["Lung Opacity"] and any(labels[c] for c in children):
            assert "opacity" not in params["findings"]


def _find(sign: str, site: str) -> dict:
    for i in range(5000):
        _, params = sample_case(site, np.random.default_rng([3, SITES.index(site), i]))
        if sign in params["findings"] and not params["findings"][sign].get("subtle"):
            return params
    raise AssertionError(f"no {sign} in 5000 samples of site {site}")


SIGNS = [
    ("effusion", "a"), ("pneumothorax", "a"), ("consolidation", "a"), ("pneumonia", "a"), ("atelectasis", "a"),
    ("edema", "a"), ("opacity", "a"), ("nodule", "a"), ("mass", "a"), ("pleural_thickening", "b"),
    ("fracture", "a"), ("devices", "a"), ("fibrosis", "b"), ("hernia", "b"), ("emphysema", "b"),
]  # fmt: skip


@pytest.mark.parametrize(("sign", "site"), SIGNS, ids=[s for s, _ in SIGNS])
def test_every_finding_is_visible_at_model_resolution(sign, site):
    # Render the same film (same noise) with and without the finding, downsampled to 112 px as the tiny
    # model sees it: the finding must change some pixels by a clearly visible amount.
    params = _find(sign, site)
    without = copy.deepcopy(params)
    del without["findings"][sign]
    if sign == "emphysema":  # its cause is in the anatomy: low flat domes
        without["anatomy"].update(dome_right=0.70, dome_left=0.725, dome_curvature=0.08)
    a, b = (np.asarray(render(p, 256).resize((112, 112), Image.BILINEAR), dtype=float) for p in (params, without))
    assert np.abs(a - b).max() > 30, sign


@pytest.mark.parametrize(("label", "low", "high"), [("Cardiomegaly", 0.56, 0.8), ("No Finding", 0.38, 0.54)])
def test_cardiothoracic_ratio_follows_the_label(label, low, high):
    for i in range(200):
        labels, params = sample_case("a", np.random.default_rng([2, 0, i]))
        if labels[label] == 1.0:
            assert low <= params["anatomy"]["ctr"] <= high


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown site"):
        generate("c", 1)
    with pytest.raises(ValueError, match="size"):
        generate("a", 1, size=16)
