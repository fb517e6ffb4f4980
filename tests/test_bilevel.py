"""The first-order hypergradient node and the aggregation of branch hypergradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adverse_vision import bilevel, parallel


def _problem(seed, n=16):
    """Nonlinear upper and lower losses of two pytrees over a batch of n samples."""
    rng = np.random.default_rng(seed)
    theta = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
             "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
    omega = {"v": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32),
             "c": jnp.asarray(rng.standard_normal(2), jnp.float32)}
    x_low = jnp.asarray(rng.standard_normal((n, 3)), jnp.float32)
    x_up = jnp.asarray(rng.standard_normal((n, 3)), jnp.float32)
    y_low = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
    y_up = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
    return theta, omega, (x_low, y_low, x_up, y_up)


def _predict(theta, omega, x):
    h = jnp.tanh(x @ theta["w"] + theta["b"])
    return h @ omega["v"] + omega["c"]


def _losses(data):
    x_low, y_low, x_up, y_up = data

    def lower(theta, omega):
        return jnp.mean(jnp.square(_predict(theta, omega, x_low) - y_low))

    def upper(theta, omega):
        err = jnp.abs(_predict(theta, omega, x_up) - y_up)
        return jnp.mean(err) + 0.01 * jnp.sum(jnp.square(theta["w"]))

    return upper, lower


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_explicit_formula_on_random_problems(seed):
    theta, omega, data = _problem(seed)
    upper, lower = _losses(data)
    g = bilevel.hypergradient(upper, lower, theta, omega)
    ref = bilevel.explicit_hypergradient(upper, lower, theta, omega)
    _close(g, ref)
    # The correction is not negligible: G differs from the direct gradient.
    direct = jax.grad(upper)(theta, omega)
    diff = bilevel.tree_norm(jax.tree.map(jnp.subtract, g, direct))
    assert float(diff) > 1e-3 * float(bilevel.tree_norm(direct))


def test_explicit_formula_by_hand():
    """Quadratic losses with hand-written gradients, independent of autodiff."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 4))
    a = a @ a.T + 4 * np.eye(4)
    b = rng.standard_normal((4, 3))
    c = rng.standard_normal(4)
    lam = 0.3
    theta = rng.standard_normal(3)
    omega = rng.standard_normal(4)

    def lower(t, w):
        r = w - b @ t
        return 0.5 * r @ (a @ r)

    def upper(t, w):
        return 0.5 * jnp.sum(jnp.square(w - c)) + 0.5 * lam * t @ t

    r = omega - b @ theta
    f_omega, f_theta = a @ r, -b.T @ (a @ r)
    big_f_omega, big_f_theta = omega - c, lam * theta
    eps = bilevel.DEFAULT_EPS
    expected = big_f_theta - (big_f_omega @ f_omega) / (
        f_omega @ f_omega + eps * f_theta @ f_theta) * f_theta
    with jax.enable_x64(True):
        g = bilevel.hypergradient(upper, lower, jnp.asarray(theta), jnp.asarray(omega))
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-10)


def test_under_jit_and_on_eight_devices():
    theta, omega, data = _problem(7, n=32)
    upper, lower = _losses(data)
    ref = bilevel.explicit_hypergradient(upper, lower, theta, omega)

    def run(theta, omega, data):
        up, low = _losses(data)
        return bilevel.hypergradient(up, low, theta, omega)

    _close(jax.jit(run)(theta, omega, data), ref)

    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    rep = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.device_put(data, rows)
    out = jax.jit(run, in_shardings=(rep, rep, rows), out_shardings=rep)(theta, omega, sharded)
    _close(out, ref)


def test_scalar_lower_level_is_the_implicit_formula():
    with jax.enable_x64(True):
        rows = bilevel.quadratic_report(dim_theta=3, dim_omega=1, distances=(1e-2, 0.5))
    for row in rows:  # exact up to eps |grad_theta f|^2 / |grad_omega f|^2 (~1e-8 here)
        assert row["iterate_relative_error"] < 1e-7
    # With a 10-dimensional lower level the rank-one model is an approximation.
    with jax.enable_x64(True):
        rows = bilevel.quadratic_report(dim_theta=4, dim_omega=10, distances=(0.1,))
    assert rows[0]["iterate_relative_error"] > 1e-3


def test_quadratic_report_figures():
    """The report's figures, recomputed here from the problem with numpy."""
    with jax.enable_x64(True):
        (row,) = bilevel.quadratic_report(dim_theta=4, dim_omega=10, seed=2, condition=10.0,
                                          lam=0.1, distances=(0.1,))
        a, b, c, d, theta, u = (np.asarray(x) for x in bilevel._quadratic(4, 10, 2, 10.0))
    omega = b @ theta + 0.1 * u
    f_omega, f_theta = a @ (omega - b @ theta), -b.T @ (a @ (omega - b @ theta))
    big_f_omega, big_f_theta = c.T @ (c @ omega - d), 0.1 * theta
    g = big_f_theta - (big_f_omega @ f_omega) / (f_omega @ f_omega) * f_theta
    exact = 0.1 * theta + b.T @ (c.T @ (c @ (b @ theta) - d))
    at_iterate = big_f_theta + b.T @ big_f_omega

    def cos(x, y):
        return x @ y / (np.linalg.norm(x) * np.linalg.norm(y))

    def rel(x, y):
        return np.linalg.norm(x - y) / np.linalg.norm(y)

    for key, want in (("cosine", cos(g, exact)), ("relative_error", rel(g, exact)),
                      ("direct_cosine", cos(big_f_theta, exact)),
                      ("direct_relative_error", rel(big_f_theta, exact)),
                      ("iterate_relative_error", rel(g, at_iterate))):
        assert row[key] == pytest.approx(want, rel=1e-6), key
    assert row["cosine"] < 0.999  # the rank-one model is not the exact hypergradient


def test_lower_level_at_optimum_gives_the_direct_gradient():
    theta = jnp.asarray([0.5, -1.0])
    omega = jnp.asarray([2.0])

    def lower(t, w):  # minimised exactly at the given omega
        return jnp.sum(jnp.square(w - 2.0)) * (1.0 + jnp.sum(t * t))

    def upper(t, w):
        return jnp.sum(w * t[0]) + jnp.sum(t)

    g = bilevel.hypergradient(upper, lower, theta, omega)
    assert np.all(np.isfinite(np.asarray(g)))
    _close(g, jax.grad(upper)(theta, omega))


def _linear_problem(delta):
    """f = <c, theta> + delta <d, omega>: a lower gradient delta d, a theta gradient c.
    F = <e, omega> + <h, theta>."""
    rng = np.random.default_rng(11)
    c, h = (jnp.asarray(rng.standard_normal(5), jnp.float32) for _ in range(2))
    d, e = (jnp.asarray(rng.standard_normal(3), jnp.float32) for _ in range(2))

    def lower(t, w):
        return jnp.sum(c * t) + delta * jnp.sum(d * w)

    def upper(t, w):
        return jnp.sum(e * w) + jnp.sum(h * t)

    return upper, lower, (c, d, e, h)


@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-5, 1e-6, 1e-8, 1e-12, 1e-20, 0.0])
def test_near_zero_lower_gradient_gives_a_bounded_correction(delta):
    upper, lower, (c, d, e, h) = _linear_problem(delta)
    theta, omega = jnp.zeros(5), jnp.zeros(3)
    eps = bilevel.DEFAULT_EPS
    g = np.asarray(bilevel.hypergradient(upper, lower, theta, omega))
    assert np.all(np.isfinite(g))
    # The correction is at most |grad_omega F| / (2 sqrt(eps)), whatever the scales.
    bound = float(jnp.linalg.norm(e)) / (2.0 * np.sqrt(eps))
    assert np.linalg.norm(g - np.asarray(h)) <= bound * (1 + 1e-5)
    c64, d64, e64, h64 = (np.asarray(x, np.float64) for x in (c, d, e, h))
    coef = delta * (e64 @ d64) / (delta ** 2 * (d64 @ d64) + eps * (c64 @ c64))
    np.testing.assert_allclose(g, h64 - coef * c64, rtol=1e-5, atol=1e-6 * np.linalg.norm(h64))
    explicit = bilevel.explicit_hypergradient(upper, lower, theta, omega)
    np.testing.assert_allclose(np.asarray(explicit), g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ordinary_gradients_give_the_plain_formula(seed):
    """Away from a vanishing lower gradient the regulariser changes G by less than
    float32 resolution: G is the plain formula, <grad_omega F, g> / |g|^2."""
    with jax.enable_x64(True):
        theta, omega, data = _problem(seed)
        theta, omega, data = jax.tree.map(lambda x: x.astype(jnp.float64), (theta, omega, data))
        upper, lower = _losses(data)
        f_theta, f_omega = jax.grad(upper, argnums=(0, 1))(theta, omega)
        l_theta, l_omega = jax.grad(lower, argnums=(0, 1))(theta, omega)
        coef = bilevel.tree_vdot(f_omega, l_omega) / bilevel.tree_vdot(l_omega, l_omega)
        plain = jax.tree.map(lambda a, b: a - coef * b, f_theta, l_theta)
        g = bilevel.hypergradient(upper, lower, theta, omega)
        diff = bilevel.tree_norm(jax.tree.map(jnp.subtract, g, plain))
        assert float(diff) < 1e-7 * float(bilevel.tree_norm(plain))
        # The old absolute regulariser, |g|^2 + 1e-12, gave the same.
        coef_old = (bilevel.tree_vdot(f_omega, l_omega)
                    / (bilevel.tree_vdot(l_omega, l_omega) + 1e-12))
        old = jax.tree.map(lambda a, b: a - coef_old * b, f_theta, l_theta)
        diff = bilevel.tree_norm(jax.tree.map(jnp.subtract, g, old))
        assert float(diff) < 1e-7 * float(bilevel.tree_norm(old))


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3])
def test_rescaling_the_lower_loss_changes_nothing(scale):
    """G is invariant to f -> a f (its coefficient scales by 1/a, grad_theta f by a);
    the regulariser keeps that invariance."""
    theta, omega, data = _problem(4)
    upper, lower = _losses(data)
    ref = bilevel.hypergradient(upper, lower, theta, omega)
    scaled = bilevel.hypergradient(upper, lambda t, w: scale * lower(t, w), theta, omega)
    _close(scaled, ref, rtol=1e-5, atol=1e-6)


def _branches():
    g1 = {"a": jnp.asarray([1.0, 0.0]), "b": jnp.asarray([[2.0]])}
    g2 = {"a": jnp.asarray([0.0, -3.0]), "b": jnp.asarray([[4.0]])}
    return g1, g2


def test_fixed_weights_act_on_each_branch():
    g1, g2 = _branches()
    total, w = bilevel.aggregate([g1, g2], "fixed", weights=(1.0, 0.0))
    _close(total, g1)
    total, w = bilevel.aggregate([g1, g2], "fixed", weights=(0.0, 1.0))
    _close(total, g2)
    total, w = bilevel.aggregate([g1, g2], "fixed", weights=(0.9, 0.1))
    _close(total, {"a": jnp.asarray([0.9, -0.3]), "b": jnp.asarray([[2.2]])})
    np.testing.assert_allclose(np.asarray(w), [0.9, 0.1])


def test_random_weights_are_a_fresh_softmax_and_not_the_collapsed_average():
    g1, g2 = _branches()
    key = jax.random.key(3)
    total, w = bilevel.aggregate([g1, g2], "random", key=key)
    expected_w = jax.nn.softmax(jax.random.normal(key, (2,)))
    np.testing.assert_allclose(np.asarray(w), np.asarray(expected_w), rtol=1e-6)
    assert abs(float(jnp.sum(w)) - 1.0) < 1e-6
    _close(total, jax.tree.map(lambda x, y: w[0] * x + w[1] * y, g1, g2))
    collapsed = jax.tree.map(lambda x, y: 0.5 * (x + y), g1, g2)
    diff = bilevel.tree_norm(jax.tree.map(jnp.subtract, total, collapsed))
    assert float(diff) > 1e-3
    _, w_other = bilevel.aggregate([g1, g2], "random", key=jax.random.key(4))
    assert not np.allclose(np.asarray(w), np.asarray(w_other))


def test_gradnorm_balances_the_branch_steps():
    g1, g2 = _branches()
    _, w = bilevel.aggregate([g1, g2], "gradnorm")
    n1, n2 = float(bilevel.tree_norm(g1)), float(bilevel.tree_norm(g2))
    assert abs(float(w[0]) * n1 - float(w[1]) * n2) < 1e-5
    assert abs(float(jnp.sum(w)) - 1.0) < 1e-6
    zero = jax.tree.map(jnp.zeros_like, g1)
    total, w = bilevel.aggregate([zero, g2], "gradnorm")
    np.testing.assert_allclose(np.asarray(w), [0.0, 1.0])
    _close(total, g2)


def test_aggregate_errors():
    g1, g2 = _branches()
    with pytest.raises(ValueError, match="choose one of"):
        bilevel.aggregate([g1, g2], "mean")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        bilevel.aggregate([g1, g2], "random")
    with pytest.raises(ValueError, match="needs 2 weights"):
        bilevel.aggregate([g1, g2], "fixed", weights=(1.0,))
    with pytest.raises(ValueError, match="no branch"):
        bilevel.aggregate([], "gradnorm")


def test_aggregate_through_a_pullback_equals_aggregating_pulled_gradients():
    rng = np.random.default_rng(9)
    m = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)

    def pullback(c):  # a linear map, like a VJP
        return {"p": c["u"] @ m, "q": 2.0 * c["v"]}

    cots = [{"u": jnp.asarray(rng.standard_normal(5), jnp.float32),
             "v": jnp.asarray(rng.standard_normal(2), jnp.float32)} for _ in range(3)]
    pulled = [pullback(c) for c in cots]
    for rule, kw in (("fixed", {"weights": (0.2, 0.5, 0.3)}), ("random", {"key": jax.random.key(0)}),
                     ("gradnorm", {})):
        total, w = bilevel.aggregate_through(pullback, cots, rule, **kw)
        ref, w_ref = bilevel.aggregate(pulled, rule, **kw)
        _close(total, ref)
        np.testing.assert_allclose(np.asarray(w), np.asarray(w_ref), rtol=1e-6)
