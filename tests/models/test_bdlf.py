"""BDLF's fusion network and critic: the official weights' outputs, sizes, key names, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from adverse_vision.convert import load_official, read_state_dict
from adverse_vision.models.bdlf import BDLFusion, FusionNet, PixelCritic
from adverse_vision.models.layers import param_count
from tests.helpers import reference

NAME = "bdlfusion_fusion_seed0.npz"


def _nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _rel(out, ref):
    ref = np.asarray(ref).transpose(0, 2, 3, 1)
    return float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def path():
    return reference(NAME)


@pytest.fixture(scope="module")
def arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_official_weights_reproduce_the_official_outputs(path, arrays):
    model, variables = load_official("bdlfusion", path)
    out = model.apply(variables, _nhwc(arrays["ir_nchw"]), _nhwc(arrays["vis_y_nchw"]),
                      train=False)
    assert set(out) == {"fused", "critic"}
    # Measured: 1.7e-6 (fused) and 1.5e-6 (critic), float32 rounding; a wrong
    # layout, slope or padding is off by far more.
    assert _rel(out["fused"], arrays["fused_nchw"]) < 1e-5
    assert _rel(out["critic"], arrays["critic_nchw"]) < 1e-5


def test_official_training_checkpoint_names(path, arrays):
    sd = read_state_dict(path)
    renamed = {}
    for k, v in sd.items():
        k = k.replace("fusion.", "enhance_net.", 1).replace("critic.", "discriminator.", 1)
        renamed["module." + k] = v
    renamed["module.denoise_net.fcos_body.head.cls_logits.weight"] = np.zeros((6, 256, 3, 3))
    model, variables = load_official("bdlfusion", renamed)
    out = model.apply(variables, _nhwc(arrays["ir_nchw"]), _nhwc(arrays["vis_y_nchw"]))
    assert _rel(out["fused"], arrays["fused_nchw"]) < 1e-5


def test_missing_and_mismatched_keys_are_named(path):
    sd = read_state_dict(path)
    partial = {k: v for k, v in sd.items() if "DRDB2.Dcov3" not in k}
    with pytest.raises(ValueError, match="fusion/DRDB2/Dcov3"):
        load_official("bdlfusion", partial)
    bad = dict(sd)
    bad["fusion.conv2.weight"] = np.zeros((32, 64, 5, 5), np.float32)
    with pytest.raises(ValueError, match="fusion.conv2.weight"):
        load_official("bdlfusion", bad)


def test_sizes_and_the_shared_slope():
    model = BDLFusion()
    x = jnp.zeros((1, 16, 16, 1))
    shapes = jax.eval_shape(lambda k: model.init(k, x, x), jax.random.key(0))
    params = shapes["params"]
    assert param_count({"params": params["fusion"]}) == 417_730
    assert param_count({"params": params["critic"]}) == 8_704
    assert params["fusion"]["relu"]["negative_slope"].shape == ()
    assert [k for k in params["fusion"] if "relu" in k] == ["relu"]
    small = jax.eval_shape(lambda k: BDLFusion(width=0.25, critic_width=0.25).init(k, x, x),
                           jax.random.key(0))
    assert param_count({"params": small["params"]["fusion"]}) < 417_730 / 10


def test_shapes_train_mode_and_bad_inputs():
    ir = jax.random.uniform(jax.random.key(1), (2, 24, 20, 1))
    y = jax.random.uniform(jax.random.key(2), (2, 24, 20, 1))
    fusion = FusionNet(width=0.25)
    v = fusion.init(jax.random.key(0), ir, y)
    fused = fusion.apply(v, ir, y)
    assert fused.shape == (2, 24, 20, 1) and fused.dtype == jnp.float32
    critic = PixelCritic(width=0.25)
    cv = critic.init(jax.random.key(0), fused)
    score, updates = critic.apply(cv, fused, train=True, mutable=["batch_stats"])
    assert score.shape == fused.shape
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         updates["batch_stats"], cv["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0
    with pytest.raises(ValueError, match=r"same shape \(N, H, W, 1\)"):
        fusion.apply(v, ir, y[:, :20])
    with pytest.raises(ValueError, match="PixelCritic input"):
        critic.apply(cv, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="FusionNet.width"):
        FusionNet(width=0).init(jax.random.key(0), ir, y)


def _plain_fusion(params, ir, y):
    """FusionNet written out with dilated lax convolutions (no phase images)."""
    def conv(p, x, dilation=1):
        k = p["kernel"].shape[0]
        pad = ((dilation * (k // 2),) * 2,) * 2
        return lax.conv_general_dilated(x, p["kernel"], (1, 1), pad,
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    def prelu(x):
        return jnp.where(x >= 0, x, params["relu"]["negative_slope"] * x)

    x = prelu(conv(params["conv1"], jnp.concatenate([ir, y], -1)))
    for block in ("DRDB1", "DRDB2"):
        dense = x
        for i in range(1, 6):
            dense = jnp.concatenate(
                [dense, jax.nn.relu(conv(params[block][f"Dcov{i}"], dense, 2))], -1)
        x = x + jax.nn.relu(conv(params[block]["conv"], dense))
    return prelu(conv(params["conv21"], prelu(conv(params["conv2"], x))))


@pytest.mark.parametrize("size", [(24, 20), (23, 20), (24, 19)])
def test_phase_images_equal_the_dilated_network_with_gradients(size):
    """Even sizes run the dense blocks over phase images, odd ones dilated: both equal
    the network written with dilated convolutions, and so do the parameter gradients."""
    ir = jax.random.uniform(jax.random.key(1), (2, *size, 1))
    y = jax.random.uniform(jax.random.key(2), (2, *size, 1))
    fusion = FusionNet(width=0.25)
    params = fusion.init(jax.random.key(0), ir, y)["params"]
    np.testing.assert_allclose(fusion.apply({"params": params}, ir, y),
                               _plain_fusion(params, ir, y), rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda p: jnp.sum(fusion.apply({"params": p}, ir, y) ** 2))(params)
    plain = jax.grad(lambda p: jnp.sum(_plain_fusion(p, ir, y) ** 2))(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
