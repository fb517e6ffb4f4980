"""Depth-guided dehazing network: the official outputs, the parts, sizes, guidance
variants and the key rules of official and torchvision checkpoints."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.convert import read_state_dict, reference_state_dict
from adverse_vision.convert.keys import convert_state_dict, flatten, unflatten
from adverse_vision.convert.pretrained import load_pretrained
from adverse_vision.methods.depth_dehaze.keys import (
    DENSENET_RULES,
    MULTINET_IGNORED,
    MULTINET_RULES,
    TFUSE_RULES,
    example_inputs,
    tfuse_example_inputs,
)
from adverse_vision.models.densenet import LAYOUTS, DenseNetEncoder, DenseNetLayout
from adverse_vision.models.depth_dehaze import (
    MIX_INIT,
    DepthDehaze,
    DepthNet,
    Mix,
    TfuseNet,
    pad_to_multiple,
)
from adverse_vision.models.layers import param_count
from tests.helpers import fill_variables, reference

TFUSE_NAME = "depth_dehaze_tfuse_seed0.npz"
MULTINET_NAME = "sdg_multinet_seed0_64x96_b1.npz"
KEY = jax.random.key(0)
#: The small network of the tests beyond the reference checks.
TINY = dict(encoder="tiny", tfuse_dim=16)


def _nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _rel(out, ref_nchw):
    ref = np.asarray(ref_nchw).transpose(0, 2, 3, 1)
    return float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))


def _convert(state_dict, model, inputs, rules, ignored=()):
    """Variables of ``model`` from an official state dict, every key and variable used."""
    sd = read_state_dict(state_dict)
    sd = {k: v for k, v in sd.items() if not any(re.search(p, k) for p in ignored)}
    abstract = jax.eval_shape(lambda k: model.init(k, *map(jnp.asarray, inputs), train=False), KEY)
    filled, unused, missing = convert_state_dict(sd, abstract, rules, strict=True)
    assert not unused and not missing
    return unflatten({k: jnp.asarray(v) for k, v in filled.items()})


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32))


# ------------------------------------------------------------------ official outputs


def test_tfuse_reproduces_the_official_output():
    with np.load(reference(TFUSE_NAME)) as z:
        arrays = {k: z[k] for k in z.files}
    model = TfuseNet()
    variables = _convert(arrays, model, tfuse_example_inputs(64), TFUSE_RULES)
    out = jax.jit(model.apply)(variables, _nhwc(arrays["depth_mix_nchw"]),
                               _nhwc(arrays["hazy_nchw"]))
    # Measured: 1.6e-6 (float32 rounding); a wrong layer is off by far more.
    assert _rel(out, arrays["dehazed_nchw"]) < 1e-5


@pytest.fixture(scope="module")
def multinet():
    with np.load(reference(MULTINET_NAME)) as z:
        return {k: z[k] for k in z.files}


def test_multinet_reproduces_the_official_outputs(multinet):
    # As saved from a DataParallel model: every key behind "module.".
    sd = {"module." + k: v for k, v in reference_state_dict(multinet).items()}
    model = DepthDehaze()
    variables = _convert(sd, model, example_inputs(64), MULTINET_RULES, MULTINET_IGNORED)
    assert param_count(variables) == 43_359_005
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, _nhwc(multinet["hazy_nchw"]))
    assert out["dehazed"].shape == (1, 64, 96, 3) and out["inv_depth"].shape == (1, 64, 96, 1)
    # Measured: 5.7e-7 (dehazed) and 2.1e-7 (inverted depth).
    assert _rel(out["dehazed"], multinet["dehazed_nchw"]) < 1e-5
    assert _rel(out["inv_depth"], multinet["inv_depth_nchw"]) < 1e-5
    inv = np.asarray(out["inv_depth"])
    assert inv.max() == 1.0 and 0.05 < (inv == 1.0).mean() < 0.2  # the clamped part


def test_ignored_aliases_hold_the_mapped_tensors(multinet):
    """The depth module's second names are the same tensors as the torchvision names
    that the rules read, so skipping them loses nothing."""
    sd = reference_state_dict(multinet)
    first = {"conv0": "conv0", "norm0": "norm0", "model_out": "norm5",
             "dense_block": "denseblock", "trans_block": "transition"}
    prefix = "depth_finetune.depth_es."
    aliases = [k for k in sd if any(re.search(p, k) for p in MULTINET_IGNORED)
               and ".classifier." not in k]
    assert len(aliases) > 1000
    for key in aliases:
        name = key[len(prefix):]
        old = next(a for a in first if name.startswith(a))
        twin = prefix + "model.features." + first[old] + name[len(old):]
        np.testing.assert_array_equal(sd[key], sd[twin], err_msg=key)
    assert sum(".classifier." in k for k in sd) == 2


# ------------------------------------------------------------------ layouts and sizes


def test_parameter_counts():
    def count(module, *inputs):
        return param_count(jax.eval_shape(lambda k: module.init(k, *inputs), KEY))

    x = jnp.zeros((1, 64, 64, 3))
    # torchvision's densenet169 / densenet121 without their classifiers.
    assert count(DenseNetEncoder("densenet169"), x) == 12_484_480
    assert count(DenseNetEncoder("densenet121"), x) == 6_953_856
    assert LAYOUTS["densenet169"].num_features == 1664
    assert LAYOUTS["densenet121"].num_features == 1024
    assert count(TfuseNet(), x, x) == 701_315
    custom = DenseNetLayout(blocks=(1, 1, 1, 1), growth=4, init_features=8, bn_size=2)
    assert DenseNetEncoder(custom).apply(
        fill_variables(jax.eval_shape(lambda k: DenseNetEncoder(custom).init(k, x), KEY)),
        x).final.shape == (1, 2, 2, custom.num_features)


@pytest.fixture(scope="module")
def tiny():
    model = DepthDehaze(**TINY)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))), KEY)
    variables = fill_variables(shapes)
    # Raw depth around 1, so that the clamp acts on part of the image only.
    variables["params"]["depth"]["finalconv"]["bias"] = np.ones((1,), np.float32)
    return model, variables, jax.jit(lambda v, x: model.apply(v, x))


def test_any_input_size_gives_outputs_of_that_size(tiny):
    model, variables, apply = tiny
    hazy = _images((2, 37, 53, 3))
    out = apply(variables, hazy)
    assert out["dehazed"].shape == (2, 37, 53, 3) and out["inv_depth"].shape == (2, 37, 53, 1)
    assert out["dehazed"].dtype == jnp.float32 and out["inv_depth"].dtype == jnp.float32
    inv = np.asarray(out["inv_depth"])
    assert (inv > 0).all() and (inv <= 1).all() and (inv < 1).any() and (inv == 1).any()
    assert np.abs(np.asarray(out["dehazed"])).max() <= 1.0
    # The same as running the network on the reflection-padded image and cropping.
    padded = apply(variables, pad_to_multiple(hazy, 32))
    assert padded["dehazed"].shape == (2, 64, 64, 3)
    for k in out:
        np.testing.assert_allclose(out[k], padded[k][:, :37, :53], atol=1e-5, err_msg=k)
    # The parts on their own give the same.
    depth = jax.jit(lambda v, x: model.apply(v, x, method="estimate_depth"))(variables, hazy)
    np.testing.assert_allclose(depth, out["inv_depth"], atol=1e-5)
    alone = jax.jit(DepthNet("tiny").apply)({c: variables[c]["depth"] for c in variables}, hazy)
    np.testing.assert_allclose(alone, out["inv_depth"], atol=1e-5)


def test_training_mode_updates_statistics_and_drops_paths(tiny):
    model, variables, _ = tiny
    hazy = _images((2, 32, 32, 3), seed=1)
    out, updates = jax.jit(lambda v, x, k: model.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k}))(
            variables, hazy, jax.random.key(1))
    assert out["dehazed"].shape == (2, 32, 32, 3)
    before = flatten(variables["batch_stats"])
    after = flatten(updates["batch_stats"])
    assert set(after) == set(before) and all(p[0] == "depth" for p in after)
    assert any(not np.allclose(after[p], before[p]) for p in after)
    # The dehazer has no BatchNorm: in training it differs from evaluation only by drop-path.
    dehazer = {"params": variables["params"]["dehazer"]}
    y, h = _images((4, 16, 16, 3), seed=2), _images((4, 16, 16, 3), seed=3)

    def run(rate, train):
        fn = lambda k: TfuseNet(16, drop_path_rate=rate).apply(  # noqa: E731
            dehazer, y, h, train=train, rngs={"dropout": k})
        return jax.jit(fn)(jax.random.key(2))

    np.testing.assert_allclose(run(0.0, True), run(0.0, False), atol=1e-6)
    assert not np.allclose(run(0.5, True), run(0.5, False), atol=1e-4)


# ------------------------------------------------------------------ guidance variants


def test_mix_blends_the_guide_into_the_hazy_image():
    mix = Mix()
    guide, hazy = _images((1, 8, 8, 1)), _images((1, 8, 8, 3), seed=1)
    variables = mix.init(KEY, guide, hazy)
    np.testing.assert_array_equal(variables["params"]["w"], np.float32([MIX_INIT]))
    s = 1 / (1 + np.exp(-MIX_INIT))
    np.testing.assert_allclose(mix.apply(variables, guide, hazy),
                               s * np.repeat(guide, 3, -1) + (1 - s) * hazy, atol=1e-6)


def test_oracle_depth_replaces_the_estimated_one(tiny):
    model, variables, apply = tiny
    hazy = _images((2, 37, 53, 3))  # the size of the test above: its program is reused
    oracle = _images((2, 37, 53, 1), seed=5) * 0.8 + 0.2
    out = jax.jit(lambda v, x, d: model.apply(v, x, depth=d))(variables, hazy, oracle)
    np.testing.assert_array_equal(out["inv_depth"], oracle)
    dehaze = jax.jit(lambda v, x, d: model.apply(v, x, d, method="dehaze"))
    np.testing.assert_allclose(out["dehazed"], dehaze(variables, hazy, oracle), atol=1e-5)
    estimated = apply(variables, hazy)
    assert not np.allclose(out["dehazed"], estimated["dehazed"], atol=1e-4)
    with pytest.raises(ValueError,
                       match=r"depth map of shape \(2, 37, 53, 1\), got \(2, 37, 53, 3\)"):
        jax.eval_shape(lambda x: model.apply(variables, x, depth=x), hazy)


def test_no_depth_guidance_mixes_the_hazy_image_and_has_no_depth_net():
    model = DepthDehaze(guidance="hazy", **TINY)
    hazy = _images((1, 32, 40, 3))
    variables = fill_variables(jax.eval_shape(lambda k: model.init(k, hazy), KEY))
    assert set(variables["params"]) == {"mix", "dehazer"} and "batch_stats" not in variables
    out = jax.jit(model.apply)(variables, hazy)
    assert out["inv_depth"] is None
    padded = pad_to_multiple(hazy, 32)
    alone = jax.jit(TfuseNet(16).apply)({"params": variables["params"]["dehazer"]}, padded, padded)
    np.testing.assert_allclose(out["dehazed"], alone[:, :32, :40], atol=1e-5)
    with pytest.raises(ValueError, match="guidance='hazy'"):
        jax.eval_shape(lambda x: model.apply(variables, x, depth=x[..., :1]), hazy)


# ------------------------------------------------------------------ key rules


def _torchvision_densenet(layout, seed=0):
    """A torchvision-style DenseNet state dict (``features.*`` and ``classifier.*``),
    written from the torchvision layout; the first dense block in the old spelling of
    torchvision's download files (``norm.1``, ``conv.2``)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def bn(name, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{leaf}"] = rng.uniform(0.5, 1.5, (c,)).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = rng.standard_normal((cout, cin, k, k)).astype(np.float32)

    c = layout.init_features
    conv("features.conv0", c, 3, 7)
    bn("features.norm0", c)
    width = layout.bn_size * layout.growth
    for i, layers in enumerate(layout.blocks, start=1):
        for j in range(1, layers + 1):
            sep = "." if i == 1 else ""
            name = f"features.denseblock{i}.denselayer{j}"
            bn(f"{name}.norm{sep}1", c)
            conv(f"{name}.conv{sep}1", width, c, 1)
            bn(f"{name}.norm{sep}2", width)
            conv(f"{name}.conv{sep}2", layout.growth, width, 3)
            c += layout.growth
        if i < len(layout.blocks):
            bn(f"features.transition{i}.norm", c)
            conv(f"features.transition{i}.conv", c // 2, c, 1)
            c //= 2
    bn("features.norm5", c)
    sd["classifier.weight"] = np.zeros((10, c), np.float32)
    sd["classifier.bias"] = np.zeros((10,), np.float32)
    return sd


def test_torchvision_rules_fill_the_whole_encoder(tmp_path):
    sd = _torchvision_densenet(LAYOUTS["tiny"])
    path = tmp_path / "densenet_tiny.npz"
    np.savez(path, **sd)
    model = DepthDehaze(**TINY)
    abstract = jax.eval_shape(lambda k: model.init(k, *map(jnp.asarray, example_inputs(32))), KEY)
    filled, report = load_pretrained(str(path), abstract, DENSENET_RULES, "depth_dehaze")
    encoder = {p for c in abstract for p in
               (((c,) + q) for q in flatten(abstract[c])) if p[1:3] == ("depth", "encoder")}
    assert set(filled) == encoder
    assert not report.mismatched and report.unused == ["classifier.bias", "classifier.weight"]
    np.testing.assert_array_equal(filled[("params", "depth", "encoder", "conv0", "kernel")],
                                  sd["features.conv0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        filled[("batch_stats", "depth", "encoder", "denseblock1", "denselayer2", "norm2", "var")],
        sd["features.denseblock1.denselayer2.norm.2.running_var"])


def test_a_learned_scalar_maps_by_its_own_name():
    model = DepthDehaze(**TINY)
    abstract = jax.eval_shape(lambda k: model.init(k, *map(jnp.asarray, example_inputs(32))), KEY)
    filled, unused, _ = convert_state_dict({"mix1.w": np.array([0.25], np.float32)}, abstract,
                                           MULTINET_RULES, strict=False)
    assert not unused
    np.testing.assert_array_equal(filled[("params", "mix", "w")], [0.25])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("build, inputs, message", [
    (lambda: DepthDehaze(**TINY), [(1, 32, 32, 1)],
     r"DepthDehaze: expected images of shape \(N, H, W, 3\), got shape \(1, 32, 32, 1\)"),
    (lambda: DepthDehaze(encoder="densenet999"), [(1, 32, 32, 3)],
     r"DenseNet layout 'densenet999': expected one of \('densenet169', 'densenet121', 'tiny'\)"),
    (lambda: DepthDehaze(guidance="none", **TINY), [(1, 32, 32, 3)],
     r"DepthDehaze.guidance: expected one of \('depth', 'hazy'\), got 'none'"),
    (lambda: TfuseNet(16), [(1, 4, 4, 3), (1, 4, 4, 3)],
     r"TfuseNet: images of at least 8x8 pixels needed, got 4x4"),
    (lambda: TfuseNet(16), [(1, 16, 16, 3), (1, 16, 12, 3)],
     r"TfuseNet: y and the hazy image differ in shape"),
])
def test_bad_input_is_one_readable_error(build, inputs, message):
    model = build()
    arrays = [jnp.zeros(s) for s in inputs]
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda k: model.init(k, *arrays), KEY)


def test_layout_values_are_checked():
    with pytest.raises(ValueError, match=r"DenseNetLayout.blocks: expected four positive"):
        DenseNetLayout(blocks=(6, 12, 32))
    with pytest.raises(ValueError, match=r"DenseNetLayout.growth: expected a positive integer"):
        DenseNetLayout(growth=0)
