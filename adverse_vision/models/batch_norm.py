"""BatchNorm with a choice of where its training statistics come from.

Every BatchNorm of the project's networks is this :class:`BatchNorm`: flax's
``nn.BatchNorm`` (the same fields, parameters ``scale``/``bias`` and ``batch_stats``
``mean``/``var``, the same results) whose training statistics are, by default, those of
the whole global batch. Under a batch-sharded ``jit`` that is one cross-device
reduction of two per-channel vectors per layer, forward and backward: small in bytes,
but one latency-bound collective per layer, and a network of 100 BatchNorms waits on
200 of them every step.

Inside :func:`per_device_statistics` (the trainer enters it for ``model.bn_sync=False``)
each device normalises its own rows with their own statistics instead, as
``torch.nn.BatchNorm2d`` does under ``DistributedDataParallel`` without ``SyncBatchNorm``:
the batch is split into as many equal groups as the mesh's ``data`` axis has devices
(the rows each device holds), statistics are taken per group, and the running averages
move by the mean of the groups' statistics, so they stay one replicated value. With one
device, or outside a mesh, nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from adverse_vision.ops.per_device import devices_on_batch

_PER_DEVICE = contextvars.ContextVar("adverse_vision_per_device_batch_statistics", default=0)


@contextlib.contextmanager
def per_device_statistics(enabled: bool = True, groups: Optional[int] = None) -> Iterator[None]:
    """BatchNorms traced inside take training statistics per device (see the module doc).

    Args:
      enabled: False leaves the global-batch statistics (a no-op context).
      groups: the number of row groups; default: the devices of the current abstract
        mesh's ``data`` axis, read when a BatchNorm is traced (1 outside a mesh).
    """
    token = _PER_DEVICE.set((groups if groups is not None else -1) if enabled else 0)
    try:
        yield
    finally:
        _PER_DEVICE.reset(token)


def statistic_groups(rows: int) -> int:
    """How many groups a batch of ``rows`` is normalised in, in the current context.

    Raises:
      ValueError: the rows do not divide into the groups."""
    setting = _PER_DEVICE.get()
    if setting == 0:
        return 1
    groups = devices_on_batch() if setting < 0 else setting
    if rows % groups:
        raise ValueError(f"per-device BatchNorm statistics (model.bn_sync=False): a batch of "
                         f"{rows} rows does not split over {groups} devices")
    return groups


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` (channels last) whose statistics follow :func:`statistic_groups`."""

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None, *,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        if self.axis not in (-1, x.ndim - 1) or self.axis_name is not None or mask is not None:
            raise ValueError("BatchNorm: channels-last inputs without axis_name or mask only")
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        channels = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        groups = 1 if use_running_average or self.is_initializing() else statistic_groups(
            x.shape[0])
        # (groups, rows per group, ..., channels); statistics over all but the first and last
        grouped = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        if use_running_average:
            mean, var = ra_mean.value[None], ra_var.value[None]
        else:
            mean, var = _statistics(grouped, axes, self.dtype, self.use_fast_variance)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.mean(0)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.mean(0)
        shape = (mean.shape[0],) + (1,) * len(axes) + (channels,)
        mean, var = mean.reshape(shape), var.reshape(shape)
        y = grouped - mean
        mul = jax.lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
            mul = mul * scale
            args.append(scale)
        y = y * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
            y = y + bias
            args.append(bias)
        dtype = self.dtype if self.dtype is not None else jnp.result_type(*args)
        return jnp.asarray(y.reshape(x.shape), dtype)


def _statistics(x: jax.Array, axes: tuple[int, ...], dtype, fast_variance: bool):
    """Per-group mean and (biased) variance over ``axes``, in at least float32."""
    dtype = jnp.promote_types(dtype if dtype is not None else x.dtype, jnp.float32)
    x = x.astype(dtype)
    mean = x.mean(axes)
    if fast_variance:
        var = jnp.maximum(0.0, jnp.square(x).mean(axes) - jnp.square(mean))
    else:
        var = jnp.square(x - jnp.expand_dims(mean, axes)).mean(axes)
    return mean, var
