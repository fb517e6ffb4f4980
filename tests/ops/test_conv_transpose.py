"""Sub-pixel transposed convolution against flax's dilated nn.ConvTranspose."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.layers import TorchConvTranspose, torch_bias_init, torch_kernel_init
from adverse_vision.ops.conv_transpose import conv_transpose


def _key(seed=0):
    return jax.random.key(seed)


@pytest.mark.parametrize("k,stride,padding,output_padding,hw", [
    (3, 2, 1, 1, (5, 6)),   # TogetherNet's decoder: exactly doubles
    (4, 2, 1, 0, (3, 7)),   # DN-HL's denoiser: exactly doubles
    (3, 2, 1, 1, (1, 1)),
    (2, 2, 0, 0, (4, 3)),
    (5, 3, 2, 1, (4, 5)),
    (3, 1, 1, 0, (6, 6)),
    (4, 2, 3, 1, (6, 5)),   # padding larger than the phase window
])
def test_matches_dilated_form_values_and_gradients(k, stride, padding, output_padding, hw):
    x = jax.random.normal(_key(), (2, *hw, 5))
    new = TorchConvTranspose(4, k, stride, padding, output_padding)
    pad = ((k - 1 - padding, k - 1 - padding + output_padding),) * 2
    old = nn.ConvTranspose(4, (k, k), strides=(stride, stride), padding=pad,
                           transpose_kernel=True, kernel_init=torch_kernel_init,
                           bias_init=torch_bias_init(4 * k * k))
    variables = new.init(_key(1), x)
    # same variables, same initial values
    np.testing.assert_array_equal(variables["params"]["kernel"],
                                  old.init(_key(1), x)["params"]["kernel"])
    out_new, out_old = new.apply(variables, x), old.apply(variables, x)
    assert out_new.shape == out_old.shape == (
        2, (hw[0] - 1) * stride - 2 * padding + k + output_padding,
        (hw[1] - 1) * stride - 2 * padding + k + output_padding, 4)
    np.testing.assert_allclose(out_new, out_old, rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(_key(2), out_old.shape)

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * cot), argnums=(0, 1))(
            variables, x)

    for a, b in zip(jax.tree.leaves(grads(new)), jax.tree.leaves(grads(old))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="conv_transpose"):
        conv_transpose(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 5)), 2, 1)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 3)), 2, 1, 2)
