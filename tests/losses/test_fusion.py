"""The fusion loss's Gaussian SSIM against a direct numpy computation; the critic losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import convolve2d

from adverse_vision.losses.fusion import (
    critic_loss,
    fusion_loss,
    gaussian_ssim,
    generator_loss,
)


def _ssim_numpy(a, b, data_range=1.0):
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)

    def blur(z):
        return convolve2d(z, w, mode="same", boundary="fill", fillvalue=0.0)

    mu_a, mu_b = blur(a), blur(b)
    va = blur(a * a) - mu_a ** 2
    vb = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return m.mean()


def test_gaussian_ssim_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 17)).astype(np.float64)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    got = np.asarray(gaussian_ssim(jnp.asarray(a[..., None]), jnp.asarray(b[..., None])))
    expected = [_ssim_numpy(a[i], b[i]) for i in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    same = gaussian_ssim(jnp.asarray(a[..., None]), jnp.asarray(a[..., None]))
    np.testing.assert_allclose(np.asarray(same), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="gaussian_ssim"):
        gaussian_ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 9, 1)))


def test_fusion_loss_value_and_valid_mask():
    rng = np.random.default_rng(1)
    u = jnp.asarray(rng.random((2, 16, 16, 1)), jnp.float32)
    m = jnp.asarray(rng.random((2, 16, 16, 1)), jnp.float32)
    loss, parts = fusion_loss(u, m, jnp.asarray([True, False]))
    l1 = float(np.mean(np.abs(np.asarray(u[0]) - np.asarray(m[0]))))
    s = _ssim_numpy(np.asarray(u[0, ..., 0], np.float64), np.asarray(m[0, ..., 0], np.float64))
    assert float(loss) == pytest.approx(l1 + 1.1 * (1 - s), rel=1e-4)
    assert float(parts["l1"]) == pytest.approx(l1, rel=1e-5)
    zero, _ = fusion_loss(m, m, jnp.asarray([True, True]))
    assert abs(float(zero)) < 1e-5
    none, _ = fusion_loss(u, m, jnp.asarray([False, False]))
    assert float(none) == 0.0
    g = jax.grad(lambda x: fusion_loss(x, m, jnp.asarray([True, True]))[0])(u)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_critic_and_generator_losses():
    fake = jnp.stack([jnp.full((4, 4, 1), 1.0), jnp.full((4, 4, 1), 3.0)])
    real = jnp.stack([jnp.full((4, 4, 1), -1.0), jnp.full((4, 4, 1), 5.0)])
    valid = jnp.asarray([True, False])
    assert float(critic_loss(fake, real, valid)) == pytest.approx(0.5 * (1.0 - (-1.0)))
    assert float(generator_loss(fake, valid)) == pytest.approx(-1.0)
    both = jnp.asarray([True, True])
    assert float(critic_loss(fake, real, both)) == pytest.approx(0.5 * (2.0 - 2.0))
