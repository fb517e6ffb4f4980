"""BDLF's infrared-visible fusion network and its pixel critic (Liu et al., IJCAI 2023).

:class:`FusionNet` (the upper-level variable theta) fuses the infrared image with
the luminance (Y) of the visible one, both (N, H, W, 1) in [0, 1]::

    concat(IR, Y) -> conv3x3 2->64 -> PReLU
      -> DRDB -> DRDB
      -> conv3x3 64->32 -> PReLU -> conv3x3 32->1 -> PReLU   = fused Y

with ONE PReLU slope shared by its three uses (the official module holds a single
``nn.PReLU()`` and calls it three times). A dilated residual dense block
(:class:`DRDB`) is five 3x3 convolutions of dilation 2 (padding 2), each growing the
features by 32 channels with ReLU and dense concatenation (64 -> 96 -> ... -> 224
channels), a 1x1 convolution back to 64, and ``out = x + ReLU(conv1x1)``. The output
is not clipped; :func:`adverse_vision.ops.color.fused_color` makes the colour image.
For even image sizes the two blocks run on the four phase images of the features
(:mod:`adverse_vision.ops.space_to_batch`), where the dilated convolutions are
undilated ones: the same sums, parameters and outputs, a faster program.

:class:`PixelCritic` (the lower-level critic omega_d) is a 1x1 "pixel GAN"
discriminator: conv1x1 1->64 -> LeakyReLU(0.2) -> conv1x1 64->128 without bias ->
BatchNorm -> LeakyReLU(0.2) -> conv1x1 128->1 without bias. It scores each pixel.

:class:`BDLFusion` holds both under ``fusion`` and ``critic`` and returns
``{"fused": FusionNet(ir, y), "critic": PixelCritic(fused)}``; it is what
``load_official("bdlfusion", ...)`` builds. Training keeps the two parameter trees
apart (``params["fusion"]``, ``params["critic"]``) and applies the two submodules
on their own (:meth:`BDLFusion.fuse`, :meth:`BDLFusion.criticize`).

Parameter names follow the official modules (``conv1``, ``DRDB1/Dcov1`` ...,
``conv21``, ``relu``; ``net_0``, ``net_2``, ``net_3``, ``net_5``) so that official
checkpoints map one to one. Small variants scale every channel count by ``width``.
Kernels and biases start as PyTorch's default initialisers do; BatchNorm as
PyTorch's (epsilon 1e-5, momentum 0.1).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adverse_vision.models.batch_norm import BatchNorm
from adverse_vision.models.layers import Conv, remat, torch_bias_init, torch_kernel_init
from adverse_vision.ops import space_to_batch

Dtype = Any

__all__ = ["DRDB", "BDLFusion", "FusionNet", "PixelCritic", "check_pair"]

FEATURES = 64
GROWTH = 32
DRDB_CONVS = 5
TAIL = 32
DILATION = 2
CRITIC_FEATURES = 64


def _scaled(channels: int, width: Any, name: str) -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Real) \
            or not math.isfinite(width) or width <= 0:
        raise ValueError(f"{name}: expected a positive multiplier, got {width!r}")
    return max(1, int(channels * width))


def check_pair(ir: jax.Array, vis_y: jax.Array) -> None:
    """Both (N, H, W, 1) of the same shape, else ValueError naming the shapes."""
    if ir.ndim != 4 or ir.shape[-1] != 1 or vis_y.shape != ir.shape:
        raise ValueError(
            "BDLF fusion input: expected infrared and visible-luminance images of the same "
            f"shape (N, H, W, 1), got {tuple(ir.shape)} and {tuple(vis_y.shape)}")


def _conv(features: int, kernel: int, fan_in: int, name: str, dtype: Dtype, param_dtype: Dtype,
          dilation: int = 1, bias: bool = True) -> nn.Conv:
    pad = dilation * (kernel // 2)
    return Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                   kernel_dilation=(dilation, dilation), use_bias=bias,
                   kernel_init=torch_kernel_init,
                   bias_init=torch_bias_init(fan_in * kernel * kernel),
                   dtype=dtype, param_dtype=param_dtype, name=name)


class DRDB(nn.Module):
    """Dilated residual dense block (see the module docstring). ``dilation=1`` runs the
    same block on phase images (:mod:`adverse_vision.ops.space_to_batch`)."""

    growth: int = GROWTH
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dilation: int = DILATION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        dense = x
        for i in range(1, DRDB_CONVS + 1):
            y = _conv(self.growth, 3, dense.shape[-1], f"Dcov{i}", self.dtype, self.param_dtype,
                      dilation=self.dilation)(dense)
            dense = jnp.concatenate([dense, nn.relu(y)], axis=-1)
        y = _conv(features, 1, dense.shape[-1], "conv", self.dtype, self.param_dtype)(dense)
        return x + nn.relu(y)


class FusionNet(nn.Module):
    """BDLF's fusion network (``Fusion_Network_IJ``): (IR, Y) -> fused Y.

    ``remat`` recomputes the two dense blocks' activations in the backward pass."""

    width: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, ir: jax.Array, vis_y: jax.Array) -> jax.Array:
        check_pair(ir, vis_y)
        features = _scaled(FEATURES, self.width, "FusionNet.width")
        growth = _scaled(GROWTH, self.width, "FusionNet.width")
        tail = _scaled(TAIL, self.width, "FusionNet.width")
        # One slope for the three activations, as the official network shares its PReLU.
        prelu = nn.PReLU(param_dtype=self.param_dtype, negative_slope_init=0.25, name="relu")
        x = jnp.concatenate([ir, vis_y], axis=-1).astype(self.dtype)
        x = prelu(_conv(features, 3, 2, "conv1", self.dtype, self.param_dtype)(x))
        block = remat(DRDB, self.remat, static_argnums=())
        # The dense blocks' dilated convolutions as undilated ones over phase images,
        # where the size allows: the same sums, faster (ops/space_to_batch.py).
        phases = space_to_batch.divides(DILATION, *x.shape[1:3])
        dilation = 1 if phases else DILATION
        if phases:
            x = space_to_batch.space_to_batch(x, DILATION)
        x = block(growth, self.dtype, self.param_dtype, dilation, name="DRDB1")(x)
        x = block(growth, self.dtype, self.param_dtype, dilation, name="DRDB2")(x)
        if phases:
            x = space_to_batch.batch_to_space(x, DILATION)
        x = prelu(_conv(tail, 3, features, "conv2", self.dtype, self.param_dtype)(x))
        x = prelu(_conv(1, 3, tail, "conv21", self.dtype, self.param_dtype)(x))
        return x.astype(jnp.float32)


class PixelCritic(nn.Module):
    """BDLF's 1x1 pixel critic (``PixelDiscriminator(1)``): (N, H, W, 1) -> (N, H, W, 1)."""

    width: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"PixelCritic input: expected (N, H, W, 1), got {tuple(x.shape)}")
        features = _scaled(CRITIC_FEATURES, self.width, "PixelCritic.width")
        y = _conv(features, 1, 1, "net_0", self.dtype, self.param_dtype)(x.astype(self.dtype))
        y = nn.leaky_relu(y, 0.2)
        y = _conv(2 * features, 1, features, "net_2", self.dtype, self.param_dtype, bias=False)(y)
        y = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=jnp.float32, param_dtype=self.param_dtype, name="net_3")(
                             y.astype(jnp.float32))
        y = nn.leaky_relu(y.astype(self.dtype), 0.2)
        y = _conv(1, 1, 2 * features, "net_5", self.dtype, self.param_dtype, bias=False)(y)
        return y.astype(jnp.float32)


class BDLFusion(nn.Module):
    """The fusion network and its critic: ``{"fused", "critic"}`` (the critic of ``fused``)."""

    width: float = 1.0
    critic_width: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.fusion = FusionNet(self.width, self.dtype, self.param_dtype)
        self.critic = PixelCritic(self.critic_width, self.dtype, self.param_dtype)

    def __call__(self, ir: jax.Array, vis_y: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        fused = self.fusion(ir, vis_y)
        return {"fused": fused, "critic": self.critic(fused, train=train)}

    def fuse(self, ir: jax.Array, vis_y: jax.Array) -> jax.Array:
        return self.fusion(ir, vis_y)

    def criticize(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.critic(x, train=train)
