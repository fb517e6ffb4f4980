"""First-order hypergradients of bi-level problems, as a node of the autodiff graph.

A bi-level problem::

    min_theta  F(theta, omega*(theta))      with  omega*(theta) = argmin_omega f(theta, omega)

(BDLF: theta the fusion network, F the fusion objective on a held-out batch, f a
lower-level loss of a critic or task network omega). The exact hypergradient,
by the implicit function theorem at the optimum omega*, is::

    dF/dtheta = grad_theta F - grad2_{theta omega} f  [grad2_{omega omega} f]^-1  grad_omega F

which needs a Hessian inverse. The first-order (Gauss-Newton) form replaces the
Hessian by the outer product of the lower-level gradient, whose pseudo-inverse
acts along that gradient only; with g = grad_omega f at the current lower-level
iterate omega::

    G = grad_theta F - (<grad_omega F, g> / (|g|^2 + eps |grad_theta f|^2)) * grad_theta f

The regulariser ``eps |grad_theta f|^2`` is relative. ``G`` does not change when
``f`` is multiplied by a constant (the coefficient scales by its inverse,
``grad_theta f`` by the constant), and the regulariser, scaling like ``|g|^2``,
keeps that. Where ``g`` vanishes while ``grad_theta f`` does not (a stationary
point in omega, where the rank-one model says nothing) the correction fades to 0
instead of growing like ``1 / |g|``: by Cauchy-Schwarz and ``|g|^2 + eps x^2 >= 2
sqrt(eps) |g| x`` its norm is at most ``|grad_omega F| / (2 sqrt(eps))`` (5e3
|grad_omega F| at the default 1e-8). Elsewhere it changes ``G`` by a relative
``eps (|grad_theta f| / |g|)^2`` at most: below float32 resolution while
``|grad_theta f| < 2 |g|`` (the BDLF branches measure ratios of 0.01 to 0.6), so
ordinary gradients get the plain formula. When both gradients are 0 the
correction is 0.

Here that formula is not written out by hand: :func:`best_response` is an
operation ``omega* = best_response(lower_loss, theta, omega)`` whose forward value
is the current iterate ``omega`` and whose backward pass, defined with
``jax.custom_vjp``, maps a cotangent ``v`` for ``omega*`` to the cotangent
``-(<v, g> / (|g|^2 + eps |grad_theta f|^2)) * grad_theta f`` for ``theta``
(:func:`correction_coefficient`). ``jax.grad`` of
``theta -> F(theta, best_response(f, theta, omega))`` then adds the direct term
``grad_theta F`` by itself and returns ``G`` (:func:`hypergradient`). The node
composes with ``jax.jit``, sharded inputs and any pytrees of parameters; it costs
one backward pass of ``f`` (for ``grad_theta f`` and ``g`` together) on top of the
backward pass of ``F``.

:func:`aggregate` combines the hypergradients of several lower-level branches
(BDLF: critic, detection, segmentation) with one of the weighting rules of
:data:`AGGREGATIONS`; :func:`aggregate_through` does the same for hypergradients
taken at an intermediate value and pulled back to the parameters by a VJP. :func:`quadratic_report` measures how close ``G`` comes to
the exact implicit-function hypergradient on a quadratic problem, as a function of
the distance of ``omega`` from the lower-level optimum
(``python -m adverse_vision.bilevel`` prints it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_EPS",
    "aggregate",
    "aggregate_through",
    "aggregation_weights",
    "best_response",
    "correction_coefficient",
    "explicit_hypergradient",
    "hypergradient",
    "quadratic_report",
    "tree_norm",
    "tree_vdot",
]

PyTree = Any
Loss = Callable[[PyTree, PyTree], jax.Array]

#: Relative regulariser: ``eps |grad_theta f|^2`` is added to ``|grad_omega f|^2`` (see
#: the module docstring); it bounds the correction by ``|grad_omega F| / (2 sqrt(eps))``.
DEFAULT_EPS = 1e-8
#: Rules of :func:`aggregate`.
AGGREGATIONS = ("random", "gradnorm", "fixed")


def _wide(x: jax.Array) -> jax.Array:
    """``x`` in float32 at least (bfloat16 leaves are widened, float64 ones kept)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Sum over leaves of <a, b>, in float32 at least."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(_wide(x), _wide(y)), a, b))
    return sum(leaves[1:], leaves[0]) if leaves else jnp.zeros((), jnp.float32)


def tree_norm(a: PyTree) -> jax.Array:
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(tree_vdot(a, a))


def _scale(tree: PyTree, c: jax.Array) -> PyTree:
    return jax.tree.map(lambda x: (c * _wide(x)).astype(x.dtype), tree)


def correction_coefficient(upper_omega: PyTree, lower_theta: PyTree, lower_omega: PyTree,
                           eps: float) -> jax.Array:
    """``<grad_omega F, g> / (|g|^2 + eps |grad_theta f|^2)`` with ``g = grad_omega f``
    (0 where both lower-level gradients are 0)."""
    denominator = (tree_vdot(lower_omega, lower_omega)
                   + eps * tree_vdot(lower_theta, lower_theta))
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, tree_vdot(upper_omega, lower_omega) / safe, 0.0)


@partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def best_response(lower_loss: Loss, theta: PyTree, omega: PyTree,
                  eps: float = DEFAULT_EPS) -> PyTree:
    """The lower-level solution ``omega*(theta)``, represented by the iterate ``omega``.

    Forward: ``omega`` unchanged. Backward (the first-order implicit model): a
    cotangent ``v`` for the result gives ``-(<v, g> / (|g|^2 + eps |grad_theta f|^2))
    * grad_theta f`` for ``theta`` (``g = grad_omega f``, ``f = lower_loss(theta,
    omega)``) and zero for ``omega``. ``lower_loss`` and ``eps`` are static.
    """
    del lower_loss, theta, eps
    return omega


def _best_response_fwd(lower_loss, theta, omega, eps):
    return omega, (theta, omega)


def _best_response_bwd(lower_loss, eps, residuals, v):
    theta, omega = residuals
    g_theta, g_omega = jax.grad(lower_loss, argnums=(0, 1))(theta, omega)
    coef = correction_coefficient(v, g_theta, g_omega, eps)
    return _scale(g_theta, -coef), jax.tree.map(jnp.zeros_like, omega)


best_response.defvjp(_best_response_fwd, _best_response_bwd)


def hypergradient(upper_loss: Loss, lower_loss: Loss, theta: PyTree, omega: PyTree,
                  eps: float = DEFAULT_EPS) -> PyTree:
    """The first-order hypergradient ``G`` (a pytree like ``theta``).

    Args:
      upper_loss: ``(theta, omega) -> scalar`` F.
      lower_loss: ``(theta, omega) -> scalar`` f, whose minimiser in ``omega`` the
        upper level sees.
      theta, omega: the two parameter pytrees (``omega`` the current lower-level
        iterate).
      eps: relative regulariser, ``eps |grad_theta f|^2`` added to ``|grad_omega f|^2``.

    ``G = grad_theta F - (<grad_omega F, grad_omega f> / (|grad_omega f|^2 + eps
    |grad_theta f|^2)) * grad_theta f``, all at ``(theta, omega)``; obtained as
    ``jax.grad`` through :func:`best_response`.
    """
    return jax.grad(lambda t: upper_loss(t, best_response(lower_loss, t, omega, eps)))(theta)


def value_and_hypergradient(upper_loss: Loss, lower_loss: Loss, theta: PyTree, omega: PyTree,
                            eps: float = DEFAULT_EPS) -> tuple[jax.Array, PyTree]:
    """``(F(theta, omega), G)`` in one pass."""
    return jax.value_and_grad(
        lambda t: upper_loss(t, best_response(lower_loss, t, omega, eps)))(theta)


def explicit_hypergradient(upper_loss: Loss, lower_loss: Loss, theta: PyTree, omega: PyTree,
                           eps: float = DEFAULT_EPS) -> PyTree:
    """The same ``G`` written out from the four gradients (a reference for tests)."""
    f_theta, f_omega = jax.grad(upper_loss, argnums=(0, 1))(theta, omega)
    l_theta, l_omega = jax.grad(lower_loss, argnums=(0, 1))(theta, omega)
    coef = correction_coefficient(f_omega, l_theta, l_omega, eps)
    return jax.tree.map(lambda a, b: a - coef * b, f_theta, l_theta)


# ----------------------------------------------------------------------------
# Aggregation of the branches' hypergradients.


def aggregation_weights(grads: Sequence[PyTree], rule: str, *, key: jax.Array | None = None,
                        weights: Sequence[float] | None = None,
                        eps: float = 1e-12) -> jax.Array:
    """The (K,) weights of :func:`aggregate`'s ``rule`` for K branch gradients.

    * ``"random"``: ``softmax(z)``, ``z ~ N(0, I)`` drawn from ``key`` (a new draw
      every hyper-step, as BDLF does);
    * ``"gradnorm"``: ``w_k = (1 / |G_k|) / sum_j (1 / |G_j|)``, so every branch
      contributes a step of the same length (a zero gradient gets weight 0);
    * ``"fixed"``: ``weights`` as given.
    """
    k = len(grads)
    if k == 0:
        raise ValueError("aggregate: no branch gradients")
    if rule == "random":
        if key is None:
            raise ValueError("aggregate: rule 'random' needs a PRNG key")
        return jax.nn.softmax(jax.random.normal(key, (k,), jnp.float32))
    if rule == "gradnorm":
        norms = jnp.stack([tree_norm(g) for g in grads])
        inv = jnp.where(norms > eps, 1.0 / jnp.maximum(norms, eps), 0.0)
        return inv / jnp.maximum(jnp.sum(inv), eps)
    if rule == "fixed":
        if weights is None or len(weights) != k:
            raise ValueError(f"aggregate: rule 'fixed' needs {k} weights, got {weights!r}")
        return jnp.asarray(weights, jnp.float32)
    raise ValueError(f"aggregate: rule is {rule!r}; choose one of {AGGREGATIONS}")


def aggregate(grads: Sequence[PyTree], rule: str, *, key: jax.Array | None = None,
              weights: Sequence[float] | None = None,
              eps: float = 1e-12) -> tuple[PyTree, jax.Array]:
    """``(sum_k w_k G_k, w)``: the branches' hypergradients combined, each kept apart
    until the weighted sum (see :func:`aggregation_weights` for the rules)."""
    w = aggregation_weights(grads, rule, key=key, weights=weights, eps=eps)
    total = jax.tree.map(lambda *leaves: sum(w[i] * _wide(leaf) for i, leaf in enumerate(leaves))
                         .astype(leaves[0].dtype), *grads)
    return total, w


def aggregate_through(pullback: Callable[[PyTree], PyTree], cotangents: Sequence[PyTree],
                      rule: str, *, key: jax.Array | None = None,
                      weights: Sequence[float] | None = None,
                      eps: float = 1e-12) -> tuple[PyTree, jax.Array]:
    """:func:`aggregate` of ``[pullback(c) for c in cotangents]``, with as few pullbacks
    as the rule allows.

    For hypergradients taken at an intermediate value (e.g. the fused images of the
    upper-level network, whose parameters get their gradient through ``pullback``, a
    VJP). ``pullback`` is linear, so for the ``random`` and ``fixed`` rules, whose
    weights do not depend on the gradients, the weighted sum of the cotangents is
    pulled back once; ``gradnorm`` needs each branch's norm and pulls each back.
    """
    if rule == "gradnorm":
        return aggregate([pullback(c) for c in cotangents], rule, eps=eps)
    w = aggregation_weights(cotangents, rule, key=key, weights=weights, eps=eps)
    combined = jax.tree.map(lambda *leaves: sum(w[i] * _wide(leaf) for i, leaf in enumerate(leaves))
                            .astype(leaves[0].dtype), *cotangents)
    return pullback(combined), w


# ----------------------------------------------------------------------------
# How close the first-order form comes to the exact hypergradient.


def _quadratic(dim_theta: int, dim_omega: int, seed: int, condition: float):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim_omega, dim_omega)))
    eig = np.geomspace(1.0, condition, dim_omega)
    a = (q * eig) @ q.T                                        # SPD lower-level Hessian
    b = rng.standard_normal((dim_omega, dim_theta))            # omega*(theta) = B theta
    c = rng.standard_normal((dim_omega, dim_omega)) / np.sqrt(dim_omega)
    d = rng.standard_normal(dim_omega)
    theta = rng.standard_normal(dim_theta)
    direction = rng.standard_normal(dim_omega)
    # float64 under x64 (as the command line runs it), float32 otherwise.
    return [jnp.asarray(x) for x in (a, b, c, d, theta, direction / np.linalg.norm(direction))]


def quadratic_report(dim_theta: int = 6, dim_omega: int = 10, seed: int = 0,
                     condition: float = 10.0, lam: float = 0.1,
                     distances: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0)) -> list[dict[str, float]]:
    """First-order ``G`` against the exact hypergradient on a quadratic problem.

    ``f = 1/2 (omega - B theta)^T A (omega - B theta)`` (A symmetric positive definite
    with eigenvalues from 1 to ``condition``), so ``omega*(theta) = B theta``;
    ``F = 1/2 |C omega - d|^2 + lam/2 |theta|^2``. The exact hypergradient is
    ``lam theta + B^T C^T (C B theta - d)``. ``G`` is evaluated at
    ``omega = B theta + r u`` for a fixed random unit direction ``u`` and each
    distance ``r``; each row gives ``distance``, ``cosine`` (of ``G`` and the exact
    one), ``relative_error`` ``|G - exact| / |exact|``, the same two figures for
    the direct term ``grad_theta F`` alone (``direct_cosine``,
    ``direct_relative_error``, the baseline that ignores the lower level), and
    ``iterate_relative_error``: the distance of ``G`` from the implicit-function
    formula evaluated at the same ``omega`` (``grad_theta F - f_theta_omega
    f_omega_omega^-1 grad_omega F``), which isolates the error of the rank-one
    Hessian model from that of an unconverged lower level. With one lower-level
    variable (``dim_omega=1``) the rank-one model is exact and that error is 0.
    """
    a, b, c, d, theta, u = _quadratic(dim_theta, dim_omega, seed, condition)

    def lower(t, w):
        r = w - b @ t
        return 0.5 * r @ (a @ r)

    def upper(t, w):
        e = c @ w - d
        return 0.5 * e @ e + 0.5 * lam * t @ t

    exact = lam * theta + b.T @ (c.T @ (c @ (b @ theta) - d))
    rows = []
    for r in distances:
        omega = b @ theta + r * u
        g = hypergradient(upper, lower, theta, omega)
        direct = jax.grad(upper)(theta, omega)
        at_iterate = direct + b.T @ (c.T @ (c @ omega - d))
        row = {"distance": float(r), "iterate_relative_error": float(
            jnp.linalg.norm(g - at_iterate) / jnp.linalg.norm(at_iterate))}
        for name, v in (("", g), ("direct_", direct)):
            row[name + "cosine"] = float(v @ exact / (jnp.linalg.norm(v) * jnp.linalg.norm(exact)))
            row[name + "relative_error"] = float(jnp.linalg.norm(v - exact) / jnp.linalg.norm(exact))
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m adverse_vision.bilevel",
        description="First-order hypergradient vs the exact one on quadratic problems.")
    parser.add_argument("--dim_theta", type=int, default=6)
    parser.add_argument("--dim_omega", type=int, default=10)
    parser.add_argument("--conditions", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    print(f"theta dim {args.dim_theta}, omega dim {args.dim_omega}; mean over {args.seeds} "
          "random problems; omega at distance r from the lower-level optimum")
    print(f"{'condition':>9} {'r':>7} {'cos(G, exact)':>14} {'|G-exact|/|exact|':>18} "
          f"{'cos(direct)':>12} {'direct rel err':>15} {'rel err vs implicit at omega':>29}")
    for cond in args.conditions:
        per_seed = [quadratic_report(args.dim_theta, args.dim_omega, s, cond)
                    for s in range(args.seeds)]
        for i, row in enumerate(per_seed[0]):
            mean = {k: float(np.mean([rows[i][k] for rows in per_seed])) for k in row}
            print(f"{cond:>9g} {mean['distance']:>7g} {mean['cosine']:>14.4f} "
                  f"{mean['relative_error']:>18.4f} {mean['direct_cosine']:>12.4f} "
                  f"{mean['direct_relative_error']:>15.4f} {mean['iterate_relative_error']:>29.4f}")


if __name__ == "__main__":
    main()
