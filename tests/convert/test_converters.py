"""A network's converter as its method declares it: the inputs that trace its
variables, whether it is built with classes, its key rules and its config.

A method registered here (as a method of another project would be) declares a
network called with an RGB image and a one-channel map and built without classes;
``load_official`` and ``export_workdir`` must read everything from that declaration.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import methods
from adverse_vision import workdir as workdir_lib
from adverse_vision.convert import load_official
from adverse_vision.convert.keys import flatten
from adverse_vision.convert.pretrained import export_workdir
from adverse_vision.data import catalog


class TwoInputNet(nn.Module):
    """An RGB image and a one-channel map in, an RGB image out; no classes."""

    @nn.compact
    def __call__(self, image, depth, train: bool = False):
        x = nn.Conv(4, (3, 3), name="mix")(jnp.concatenate([image, depth], axis=-1))
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Conv(3, (1, 1), name="out")(nn.relu(x))


def image_and_map(side):
    return np.zeros((1, side, side, 3), np.float32), np.zeros((1, side, side, 1), np.float32)


RULES = ((r"^net\.(mix|bn|out)\.", r"\1/"),)


class TwoInputMethod(methods.Method):
    datasets = {"scenes": catalog.scenes}
    best_metric = "psnr"
    converters = {"twoinput": methods.Converter(
        f"{__name__}:TwoInputNet", RULES, ignored=(r"^aux\.",), example_inputs=image_and_map,
        takes_classes=False)}

    def init_variables(self, rng):
        side = int(self.cfg.image_size)
        return dict(TwoInputNet().init(rng, *map(jnp.asarray, image_and_map(side))))


@pytest.fixture
def registered(monkeypatch):
    """The method above, registered for one test only."""
    for name in methods.names():  # the built-in ones register when first imported
        methods.get(name)
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    methods.register("two_input")(TwoInputMethod)
    return TwoInputMethod


def official(seed=0):
    """(official state dict, {(collection, *path): flax-layout array})."""
    rng = np.random.default_rng(seed)
    shapes = {("params", "mix", "kernel"): (3, 3, 4, 4), ("params", "mix", "bias"): (4,),
              ("params", "bn", "scale"): (4,), ("params", "bn", "bias"): (4,),
              ("batch_stats", "bn", "mean"): (4,), ("batch_stats", "bn", "var"): (4,),
              ("params", "out", "kernel"): (1, 1, 4, 3), ("params", "out", "bias"): (3,)}
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}
    expected, sd = {}, {}
    for path, shape in shapes.items():
        value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        expected[path] = value
        key = f"net.{path[1]}.{leaf[path[2]]}"
        sd[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    sd["net.bn.num_batches_tracked"] = np.array(3, np.int64)
    sd["aux.head.weight"] = np.zeros((2, 2), np.float32)  # declared as without counterpart
    return sd, expected


def test_load_official_reads_the_declaration(registered):
    sd, expected = official()
    model, variables = load_official("twoinput", sd, init_size=8)
    assert isinstance(model, TwoInputNet)
    got = {(c,) + p: v for c in variables for p, v in flatten(variables[c]).items()}
    assert set(got) == set(expected)
    for path, value in got.items():
        np.testing.assert_array_equal(value, expected[path], err_msg=str(path))
    out = model.apply(variables, *map(jnp.asarray, image_and_map(8)))
    assert out.shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match=r"unknown network 'nothing'; known: .*twoinput"):
        load_official("nothing", sd)


def test_export_workdir_of_a_network_without_classes(registered, tmp_path):
    sd, expected = official(seed=1)
    path = tmp_path / "official.npz"
    np.savez(path, **sd)
    cfg = methods.config("two_input")
    cfg.image_size = 16
    with pytest.raises(ValueError, match=r"--method twoinput: method 'two_input' declares no "
                                         r"config for its workdirs; pass --config"):
        export_workdir(str(path), "twoinput", str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"--size, --class_names: network 'twoinput' is built "
                                         r"without classes or sizes"):
        export_workdir(str(path), "twoinput", str(tmp_path / "a"), size="s",
                       class_names=["a"], config=cfg)
    assert not os.path.exists(tmp_path / "a")

    summary = export_workdir(str(path), "twoinput", str(tmp_path / "a"), config=cfg)
    assert summary["method"] == "two_input" and summary["network"] == "twoinput"
    assert summary["size"] is None and summary["num_classes"] is None
    assert summary["tensors_loaded"] == len(expected)
    restored_cfg, variables, step = workdir_lib.restore_variables(str(tmp_path / "a"), "latest")
    assert step == 0 and restored_cfg.method == "two_input"
    got = {(c,) + p: v for c in variables for p, v in flatten(jax.device_get(variables[c])).items()}
    assert set(got) == set(expected)
    for p, value in got.items():
        np.testing.assert_array_equal(value, expected[p], err_msg=str(p))
