"""model.remat: each network recomputes its stages in the backward pass, with the same
variables, values and gradients as without."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.bdlf import FusionNet
from adverse_vision.models.depth_dehaze import DepthDehaze
from adverse_vision.models.dnhl import Denoiser
from adverse_vision.models.yolox import YOLOX


def _images(shape, seed):
    return jax.random.uniform(jax.random.key(seed), shape)


#: name -> (model with the given remat, its inputs, apply keyword arguments)
NETWORKS = {
    "yolox": (lambda r: YOLOX(num_classes=3, size=(0.33, 0.125), remat=r),
              lambda: (_images((2, 64, 64, 3), 0),), {"train": True}),
    "denoiser": (lambda r: Denoiser(width=0.125, remat=r),
                 lambda: (_images((2, 16, 16, 3), 0),), {"train": True}),
    "fusion": (lambda r: FusionNet(width=0.25, remat=r),
               lambda: (_images((2, 16, 16, 1), 0), _images((2, 16, 16, 1), 1)), {}),
    "depth_dehaze": (lambda r: DepthDehaze(encoder="tiny", tfuse_dim=16, remat=r),
                     lambda: (_images((2, 32, 32, 3), 0),), {"train": True}),
}


def _loss_and_grads(model, variables, inputs, kwargs):
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        out = model.apply({"params": p, **rest}, *inputs, **kwargs,
                          rngs={"dropout": jax.random.key(5)},
                          mutable=["batch_stats"] if "batch_stats" in rest else False)
        out = out[0] if "batch_stats" in rest else out
        return sum(jnp.sum(jnp.sin(jnp.asarray(x, jnp.float32)))
                   for x in jax.tree.leaves(out))

    return jax.jit(jax.value_and_grad(loss)), params


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_same_value_and_gradient(name):
    build, make_inputs, kwargs = NETWORKS[name]
    inputs = make_inputs()
    plain, remat = build(False), build(True)
    variables = jax.jit(plain.init)(jax.random.key(0), *inputs)
    assert jax.tree.map(jnp.shape, jax.eval_shape(remat.init, jax.random.key(0), *inputs)) == \
        jax.tree.map(jnp.shape, variables)
    results = {}
    for key, model in (("plain", plain), ("remat", remat)):
        fn, params = _loss_and_grads(model, variables, inputs, kwargs)
        results[key] = fn(params)
        jaxpr = str(jax.make_jaxpr(fn)(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (key == "remat")
    (value, grads), (value_r, grads_r) = results["plain"], results["remat"]
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads_r, grads)
