"""The pieces of DN-HL shared by its training stages and its comparison table: the
noise, the losses on the 0-255 scale, and loading an earlier stage's run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adverse_vision import config as config_lib
from adverse_vision import storage
from adverse_vision import workdir as workdir_lib
from adverse_vision.losses import masked_mean

STAGES = ("high", "denoise", "joint")
TASKS = ("classification", "segmentation")
#: Separates the evaluation noise from every other use of the run seed.
EVAL_NOISE_SEED = 0x0D15E
#: PSNR cap of one image (dB), so that a perfect image keeps the mean finite.
MAX_PSNR = 100.0


def add_noise(clean: jax.Array, sigma: jax.Array, key: jax.Array, clip: bool = False) -> jax.Array:
    """``clean`` (float, [0, 1]) plus Gaussian noise of std ``sigma / 255``."""
    noisy = clean + (sigma / 255.0) * jax.random.normal(key, clean.shape, clean.dtype)
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def eval_noise(clean: jax.Array, sigma: jax.Array, index: jax.Array, clip: bool = False) -> jax.Array:
    """Noise drawn from a key fixed by each sample's ``index``: identical whatever the
    batch, the device count or the model."""
    base = jax.random.key(EVAL_NOISE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.maximum(index, 0))
    noise = jax.vmap(lambda k: jax.random.normal(k, clean.shape[1:], clean.dtype))(keys)
    noisy = clean + (sigma / 255.0) * noise
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def crop(x: jax.Array, pixels: int) -> jax.Array:
    """Drops ``pixels`` rows and columns on each side of axes 1 and 2."""
    if pixels == 0:
        return x
    return x[:, pixels:x.shape[1] - pixels, pixels:x.shape[2] - pixels]


def mse_255(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean squared error on the 0-255 scale of [0, 1] images, over valid images."""
    return masked_mean(jnp.mean(jnp.square((a - b) * 255.0), axis=tuple(range(1, a.ndim))),
                       valid)


#: Config keys that must agree between a stage and the run that loads it.
DENOISER_KEYS = ("dnhl.denoiser_form", "dnhl.denoiser_width")
HIGH_KEYS = ("dnhl.task", "dnhl.high_width", "dnhl.high_fc", "dnhl.high_head")


def load_stage(workdir: str, key: str, stages: tuple[str, ...], cfg: ml_collections.ConfigDict,
               agree: tuple[str, ...]):
    """(config, eval variables, step) of an earlier DN-HL stage's ``workdir``, named by
    config key ``key``; checks that it is a DN-HL run of one of ``stages`` whose
    ``agree`` config keys equal ``cfg``'s."""
    if not workdir:
        raise ValueError(f"config key '{key}' is empty: stage '{cfg.dnhl.stage}' starts from "
                         f"the workdir of a '{'/'.join(stages)}' run")
    if not storage.isdir(workdir):
        raise FileNotFoundError(f"config key '{key}': {workdir} is not a directory")
    other = workdir_lib.load_config(workdir)
    if other.method != "dnhl" or other.dnhl.stage not in stages:
        got = other.method if other.method != "dnhl" else f"dnhl stage '{other.dnhl.stage}'"
        raise ValueError(f"config key '{key}': {workdir} is a {got} run; expected a DN-HL "
                         f"'{'/'.join(stages)}' run")
    for path in agree + (("data.class_names",) if "dnhl.task" in agree else ()):
        mine, theirs = config_lib.get(cfg, path), config_lib.get(other, path)
        if tuple(np.atleast_1d(mine)) != tuple(np.atleast_1d(theirs)):
            raise ValueError(f"config key '{key}': {workdir} was trained with {path}={theirs!r}, "
                             f"this run has {mine!r}")
    _, variables, step = workdir_lib.restore_variables(workdir, "best")
    return other, variables, step
