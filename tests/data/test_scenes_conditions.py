"""The embedded scenes' conditions and thermal camera model (data.scenes_conditions)."""

import numpy as np
import pytest

from adverse_vision import config as config_lib
from adverse_vision import methods
from adverse_vision.data import catalog
from adverse_vision.data import scenes_conditions as sc
from adverse_vision.data.scenes import SKY_DEPTH, Layout, Placement, ScenesSource
from adverse_vision.config import ConfigError
from configs import bdlf_scenes

SIZE = (96, 128)
M = {name: i for i, name in enumerate(sc.MATERIALS)}


@pytest.fixture(scope="module")
def pairs():
    """Validation scenes 0-7 plain, and in each condition with the LWIR model."""
    plain = ScenesSource("val", 8, SIZE, seed=1)
    seen = {c: ScenesSource("val", 8, SIZE, seed=1, thermal="lwir", conditions=(c,))
            for c in sc.CONDITIONS}
    return [plain[i] for i in range(8)], {c: [s[i] for i in range(8)] for c, s in seen.items()}


def test_the_daylight_scene_does_not_change(pairs):
    plain, seen = pairs
    for records in seen.values():
        for a, b in zip(plain, records):
            for key in ("image", "boxes", "classes", "depth", "mask"):
                np.testing.assert_array_equal(b[key], a[key])
    simple = ScenesSource("val", 8, SIZE, seed=1, conditions=("night",))
    for i, a in enumerate(plain):  # the simple thermal image whatever the condition
        np.testing.assert_array_equal(simple[i]["thermal"], a["thermal"])
        assert simple[i]["condition"] == "night" and "hazy" in simple[i]


def test_records_and_determinism(pairs):
    _, seen = pairs
    r = seen["night_fog"][3]
    assert r["hazy"].dtype == np.uint8 and r["hazy"].shape == SIZE + (3,)
    assert r["thermal"].dtype == np.uint8 and r["thermal"].shape == SIZE + (1,)
    again = ScenesSource("val", 8, SIZE, seed=1, thermal="lwir", conditions=("night_fog",))[3]
    for key in ("hazy", "thermal"):
        np.testing.assert_array_equal(again[key], r[key])
    mixed = ScenesSource("train", 60, (48, 48), thermal="lwir", conditions=sc.CONDITIONS)
    drawn = [mixed[i]["condition"] for i in range(60)]
    assert set(drawn) == set(sc.CONDITIONS)
    assert drawn == [mixed[i]["condition"] for i in range(60)]
    assert "conditions=('day_clear'" in repr(mixed)


def test_the_visible_camera(pairs):
    plain, seen = pairs
    day = np.mean([r["image"].mean() for r in plain])
    assert all(np.array_equal(r["hazy"], p["image"]) for r, p in zip(seen["day_clear"], plain))
    assert np.mean([r["hazy"].mean() for r in seen["night"]]) < 0.5 * day
    # fog: less contrast; night fog: darker still than night
    assert np.mean([r["hazy"].std() for r in seen["day_fog"]]) < 0.7 * np.mean(
        [r["image"].std() for r in plain])
    assert np.mean([r["hazy"].mean() for r in seen["night_fog"]]) < np.mean(
        [r["hazy"].mean() for r in seen["night"]])


def test_people_stand_out_at_night_not_by_day():
    """A person's mean counts exceed the ground's in 15 of the 20 night scenes with a
    person here, and in 6 of the 20 day scenes (the sun warms the ground)."""
    warmer = {}
    for condition in ("day_clear", "night"):
        src = ScenesSource("val", 40, (96, 96), thermal="lwir", conditions=(condition,))
        hits = []
        for i in range(40):
            r = src[i]
            ir = r["thermal"][..., 0].astype(np.float32)
            ground, person = (r["mask"] == 0) & (r["depth"] < SKY_DEPTH), r["mask"] == 1
            if person.sum() > 20 and ground.sum() > 50:
                hits.append(ir[person].mean() > ir[ground].mean())
        warmer[condition] = np.mean(hits)
    assert warmer["night"] >= 0.7 and warmer["day_clear"] <= 0.6, warmer


def _layout():
    """A person, a car and a bicycle on a road, seen from 1.5 m."""
    items = (Placement("person", 20.0, 10.0, 1.75, 0.62), Placement("car", 60.0, 12.0, 1.45, 4.3),
             Placement("bicycle", 100.0, 10.0, 1.05, 1.74))
    return Layout(64, 128, 20.0, 100.0, 1.5, 0.0, 5.0, items)


def _maps():
    """Hand-made material and owner maps: sky above row 20, road below; a person
    (skin and clothing), a car (light and dark paint, glass, engine, tyres) and a
    bicycle (paint) as blocks."""
    material = np.full((64, 128), M["road"], np.uint8)
    material[:20] = M["sky"]
    owner = np.full((64, 128), -1, np.int16)
    blocks = [(0, 30, 40, 15, 25, "clothing"), (0, 24, 30, 18, 22, "skin"),
              (1, 30, 45, 45, 60, "paint"), (1, 30, 45, 60, 75, "paint"),
              (1, 30, 36, 45, 55, "glass"), (1, 40, 45, 70, 75, "engine"),
              (1, 45, 50, 48, 52, "tyre"), (2, 35, 50, 95, 105, "paint")]
    for item, y0, y1, x0, x1, name in blocks:
        material[y0:y1, x0:x1] = M[name]
        owner[y0:y1, x0:x1] = item
    clean = np.full((64, 128, 3), 0.9, np.float32)
    clean[30:45, 60:75] = 0.1  # the car's dark half
    depth = np.where(material == M["sky"], SKY_DEPTH, 10.0).astype(np.float32)
    return material, owner, clean, depth


def _states(running):
    base = {"jitter": 0.0, "absorb": 12.0, "cool": 1.0, "running": 0.0}
    car = dict(base, running=float(running), engine=30.0, tyre=12.0, exhaust=40.0, lamp=10.0)
    return [dict(base, skin=33.0, insulation=0.5), car, dict(base)]


@pytest.mark.parametrize("running", [False, True])
def test_temperatures_at_night(running):
    material, owner, clean, depth = _maps()
    weather = sc.Weather("night", True, 0.0, 15.0, 0.0)
    t = sc.temperatures(_layout(), material, owner, depth, clean, weather, _states(running),
                        np.random.default_rng(0))
    at = lambda item, name: t[(owner == item) & (material == M[name])]  # noqa: E731
    assert np.allclose(at(0, "skin"), 33.0, atol=1.0)
    assert 18.0 < at(0, "clothing").mean() < 30.0  # between ambient and skin
    road = t[(owner == -1) & (material == M["road"])].mean()
    assert 16.0 < road < 24.0  # the heat it stored by day
    if running:
        assert at(1, "engine").mean() > 40.0 and at(1, "tyre").mean() > 25.0
    else:  # a parked car cools below ambient, under the road; so does a bicycle
        assert at(1, "paint").max() < 15.0 < road and at(1, "engine").mean() < 15.0
    assert at(2, "paint").max() < 15.0 < road
    assert t[material == M["sky"]].mean() < 0.0  # a clear night sky


def test_temperatures_by_day_and_in_fog():
    material, owner, clean, depth = _maps()
    sunny = sc.Weather("day_clear", False, 0.0, 20.0, 1.0)
    t = sc.temperatures(_layout(), material, owner, depth, clean, sunny, _states(False),
                        np.random.default_rng(0))
    light, dark = t[30:45, 45:60], t[30:45, 60:75]
    assert dark.mean() > light.mean() + 5.0  # dark paint takes the sun
    assert t[(owner == -1) & (material == M["road"])].mean() > 30.0
    foggy = sc.temperatures(_layout(), material, owner, depth, clean,
                            sc.Weather("day_fog", False, 1.0, 20.0, 1.0), _states(False),
                            np.random.default_rng(0))
    # the far sky fades to the ambient temperature; near objects keep theirs
    assert abs(foggy[:20].mean() - 20.0) < 0.5 * abs(t[:20].mean() - 20.0)
    assert abs(foggy[30:45, 60:75].mean() - dark.mean()) < 0.15 * (dark.mean() - 20.0)


def test_the_thermal_camera():
    rng = np.random.default_rng(0)
    temp = np.full((64, 96), 20.0, np.float32)
    temp[40:, :] = 30.0
    temp[10, 50] = 80.0  # one hot visible pixel
    ir = sc.camera(temp, rng)[..., 0].astype(np.float32)
    assert ir.shape == (64, 96)
    assert ir[:30].mean() < 60 and ir[45:].mean() > 190  # gain control spans the frame
    # lower resolution and optics: the hot pixel spreads over its neighbours
    assert ir[10, 47] > ir[10, 40] + 5 and ir[13, 50] > ir[20, 50] + 5
    # the column stripes of the sensor (a flat field is not flat)
    flat = sc.camera(np.full((64, 96), 20.0, np.float32), rng)[..., 0].astype(np.float32)
    columns = flat.mean(axis=0)
    assert columns.std() > 2.0 * flat[:, ::2].std(axis=0).mean() / np.sqrt(64)


def test_config_keys():
    c = bdlf_scenes.get_config("smoke,lwir")
    methods.validate(c)
    assert c.data.thermal == "lwir" and tuple(c.data.conditions) == sc.CONDITIONS
    assert set(c.evals) == {"val", *sc.CONDITIONS}
    assert tuple(c.evals.night.data.conditions) == ("night",)

    def refused(edit, message):
        bad = bdlf_scenes.get_config("smoke,lwir")
        edit(bad)
        with pytest.raises(ConfigError, match=message):
            methods.validate(bad)

    refused(lambda c: setattr(c.data, "conditions", ()), "needs 'data.conditions'")
    refused(lambda c: setattr(c.data, "conditions", ("dusk",)), "has 'dusk'")
    refused(lambda c: setattr(c.data, "conditions", ("night", "night")), "repeats")
    refused(lambda c: setattr(c.data, "thermal", "mwir"), "'data.thermal' is 'mwir'")
    refused(lambda c: config_lib.set_degrade_mixture(
        c, "degrade", (config_lib.degrade_spec("haze"),)), "'data.degrade' must be none")
    refused(lambda c: setattr(c.evals.night.data, "thermal", "x"), "evals.night.data.thermal")


def test_daylight_only_sources_refuse_conditions():
    c = config_lib.base_config()
    c.data.conditions = ("night",)
    with pytest.raises(ValueError, match="segmentation source renders the daylight scenes"):
        catalog.scenes_segmentation(None, c.data, "train", None)


def test_clear_replaces_a_degradation_mixture():
    """``clear`` on a config whose degradation is a mixture (the BDLF scenes' night or
    fog) replaces it whole; on the conditions it leaves the thermal model without
    them, which validation names."""
    c = bdlf_scenes.get_config("smoke,clear")
    methods.validate(c)
    assert c.data.degrade.name == "none" and c.data.val_degrade.name == "none"
    with pytest.raises(ConfigError, match="'data.thermal' is 'lwir', which needs"):
        methods.validate(bdlf_scenes.get_config("smoke,lwir,clear"))
