import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.ops.deform_conv import (
    ModulatedDeformConv,
    deform_conv2d,
    scale_gradient,
)

K = 3
N = K * K


# ----------------------------------------------------------------------------------------
# Plain-numpy statement of TogetherNet's DeformConv2D forward pass, NCHW, with loops.
# ----------------------------------------------------------------------------------------


def reference_deform_conv(x, off, m, w, stride, padding):
    """x (B, C, H, W); off (B, 2N, Ho, Wo) rows then cols; m (B, N, Ho, Wo) or None;
    w (O, C, k, k). Returns (B, O, Ho, Wo) in float64."""
    x = np.asarray(x, np.float64)
    off = np.asarray(off, np.float64)
    w = np.asarray(w, np.float64)
    bsz, c, _, _ = x.shape
    k = w.shape[-1]
    n = k * k
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    hp, wp = xp.shape[2:]
    ho, wo = off.shape[2:]
    out = np.zeros((bsz, w.shape[0], ho, wo))
    lo_tap = -((k - 1) // 2)
    for bi in range(bsz):
        for i in range(ho):
            for j in range(wo):
                cell = np.zeros((c, k, k))
                for r in range(k):
                    for t in range(k):
                        tap = r * k + t
                        # base grid starts at padded coordinate 1 (kernel centre for k = 3)
                        pr = (1 + i * stride) + (lo_tap + r) + off[bi, tap, i, j]
                        pc = (1 + j * stride) + (lo_tap + t) + off[bi, n + tap, i, j]
                        r0, c0 = np.floor(pr), np.floor(pc)
                        r1, c1 = r0 + 1, c0 + 1
                        r0, r1 = min(max(r0, 0), hp - 1), min(max(r1, 0), hp - 1)
                        c0, c1 = min(max(c0, 0), wp - 1), min(max(c1, 0), wp - 1)
                        pr, pc = min(max(pr, 0), hp - 1), min(max(pc, 0), wp - 1)
                        w_lt = (1 + (r0 - pr)) * (1 + (c0 - pc))
                        w_rb = (1 - (r1 - pr)) * (1 - (c1 - pc))
                        w_lb = (1 + (r0 - pr)) * (1 - (c1 - pc))
                        w_rt = (1 - (r1 - pr)) * (1 + (c0 - pc))
                        r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
                        v = (
                            w_lt * xp[bi, :, r0, c0]
                            + w_rb * xp[bi, :, r1, c1]
                            + w_lb * xp[bi, :, r0, c1]
                            + w_rt * xp[bi, :, r1, c0]
                        )
                        if m is not None:
                            v = v * float(m[bi, tap, i, j])
                        cell[:, r, t] = v
                out[bi, :, i, j] = np.tensordot(w, cell, axes=([1, 2, 3], [0, 1, 2]))
    return out


def conv2d_nchw(x, w, b, stride, pad):
    """Plain cross-correlation, NCHW / OIHW, float64."""
    x = np.asarray(x, np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, _, k, _ = w.shape
    ho = (xp.shape[2] - k) // stride + 1
    wo = (xp.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], o, ho, wo))
    for r in range(k):
        for t in range(k):
            rows = slice(r, r + stride * (ho - 1) + 1, stride)
            cols = slice(t, t + stride * (wo - 1) + 1, stride)
            patch = xp[:, :, rows, cols]
            out += np.einsum("oc,bchw->bohw", np.asarray(w[:, :, r, t], np.float64), patch)
    return out + np.asarray(b, np.float64)[None, :, None, None]


def to_nchw(a):
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


def lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def out_size(size, stride, padding):
    return (size + 2 * padding - K) // stride + 1


@pytest.fixture(scope="module")
def op():
    return jax.jit(deform_conv2d, static_argnames=("stride", "padding", "dtype"))


def random_problem(seed, b=2, h=6, w=5, cin=3, cout=4, stride=1, padding=1, off_scale=1.0):
    rng = np.random.default_rng(seed)
    ho, wo = out_size(h, stride, padding), out_size(w, stride, padding)
    x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
    off = (off_scale * rng.normal(size=(b, ho, wo, 2 * N))).astype(np.float32)
    mask = rng.uniform(0.05, 1.0, size=(b, ho, wo, N)).astype(np.float32)
    kernel = (rng.normal(size=(K, K, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    return x, off, mask, kernel


# ----------------------------------------------------------------------------------------
# (a) zero offsets, mask 1 -> plain 3x3 conv with padding 1
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("use_mask", [True, False])
def test_zero_offsets_unit_mask_is_plain_conv(op, stride, use_mask):
    x, off, mask, kernel = random_problem(0, stride=stride)
    off = np.zeros_like(off)
    mask = np.ones_like(mask) if use_mask else None
    got = op(x, off, mask, kernel, stride=stride, padding=1)
    want = lax_conv(x, kernel, stride, ((1, 1), (1, 1)))
    assert got.shape == want.shape == (2, out_size(6, stride, 1), out_size(5, stride, 1), 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_mask_scales_taps(op):
    x, off, mask, kernel = random_problem(1)
    off = np.zeros_like(off)
    mask = np.full_like(mask, 0.25)
    got = op(x, off, mask, kernel, stride=1, padding=1)
    want = 0.25 * lax_conv(x, kernel, 1, ((1, 1), (1, 1)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# (b) integer offsets -> shifted conv with the official border behaviour
# ----------------------------------------------------------------------------------------


def shifted_offsets(x_shape, padding, drow, dcol, b=2):
    h, w = x_shape[1], x_shape[2]
    ho, wo = out_size(h, 1, padding), out_size(w, 1, padding)
    off = np.zeros((b, ho, wo, 2 * N), np.float32)
    off[..., :N] = drow  # first N channels: row offsets
    off[..., N:] = dcol  # next N channels: column offsets
    return off


def test_integer_offsets_padding1_is_shifted_conv(op):
    # Row +1, column -1: sample (i + r + 1, j + t - 1) of the zero-padded map; positions
    # beyond the padded map are clamped onto its zero border, i.e. read 0.
    x, _, mask, kernel = random_problem(2)
    off = shifted_offsets(x.shape, 1, 1.0, -1.0)
    got = op(x, off, np.ones_like(mask), kernel, stride=1, padding=1)
    want = lax_conv(x, kernel, 1, ((0, 2), (2, 0)))
    assert np.abs(np.asarray(want)).max() > 0.1
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_integer_offsets_padding0_doubles_clamped_border(op):
    # Without zero padding the official clamping shows: a position on or past the last
    # row (or before the first column) reads the border value with weight 2 per axis.
    x, _, _, kernel = random_problem(3)
    h, w = x.shape[1:3]
    off = shifted_offsets(x.shape, 0, 1.0, -1.0)
    got = op(x, off, np.ones(off.shape[:3] + (N,), np.float32), kernel, stride=1, padding=0)

    rows = np.arange(h) + 1  # row sampled for window row index i + r
    row_fac = np.where(rows >= h - 1, 2.0, 1.0)
    rows = np.minimum(rows, h - 1)
    cols = np.arange(w) - 1
    col_fac = np.where(cols <= -1, 2.0, 1.0)
    cols = np.maximum(cols, 0)
    shifted = x[:, rows][:, :, cols] * row_fac[None, :, None, None] * col_fac[None, None, :, None]
    want = lax_conv(shifted, kernel, 1, ((0, 0), (0, 0)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # and this is not the zero-padded bilinear answer
    zero_padded_shift = np.pad(x, ((0, 0), (0, 1), (1, 0), (0, 0)))[:, 1:, :-1]
    plain = lax_conv(zero_padded_shift, kernel, 1, ((0, 0), (0, 0)))
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-2


# ----------------------------------------------------------------------------------------
# (d) numpy statement of the official algorithm, random offsets (incl. clamped samples)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stride,padding,off_scale,use_mask",
    [(1, 1, 2.5, True), (2, 1, 4.0, True), (1, 0, 2.5, True), (1, 2, 3.0, False), (1, 0, 1e6, True)],
)
def test_matches_official_reference(op, stride, padding, off_scale, use_mask):
    x, off, mask, kernel = random_problem(10 + stride + padding, stride=stride, padding=padding,
                                          off_scale=off_scale)
    mask = mask if use_mask else None
    got = np.asarray(op(x, off, mask, kernel, stride=stride, padding=padding))
    want = reference_deform_conv(
        to_nchw(x), to_nchw(off), None if mask is None else to_nchw(mask),
        np.transpose(kernel, (3, 2, 0, 1)), stride, padding,
    )
    np.testing.assert_allclose(to_nchw(got), want, rtol=1e-5, atol=1e-5)
    # the offsets really reach outside the padded map (far outside for the 1e6 scale,
    # where clamping the position before weighting avoids catastrophic cancellation)
    h = x.shape[1]
    base = 1 + stride * np.arange(got.shape[1])[:, None] + np.repeat(np.arange(K) - 1, K)
    rows = base[None, :, None, :] + off[..., :N]
    assert (rows < 0).any() and (rows > h + 2 * padding - 1).any()


# ----------------------------------------------------------------------------------------
# (c) gradients against central finite differences in float64
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding,integer_offsets", [(1, False), (0, False), (1, True), (0, True)])
def test_gradients_match_finite_differences(padding, integer_offsets):
    with jax.enable_x64(True):
        rng = np.random.default_rng(20 + padding)
        h = w = 4
        cin, cout = 2, 2
        ho = wo = out_size(h, 1, padding)
        x = rng.normal(size=(1, h, w, cin))
        off = rng.integers(-2, 2, size=(1, ho, wo, 2 * N)).astype(np.float64)
        if not integer_offsets:
            # fractional part in [0.15, 0.85]: no bilinear kink and no clamp bound within
            # the finite-difference step, so central differences apply
            off += rng.uniform(0.15, 0.85, (1, ho, wo, 2 * N))
        # with integer offsets (zeros included) every sample sits on a kink or on a clamp
        # bound; the official gradient there is the one-sided derivative towards larger
        # positions, compared with forward differences
        mask = rng.uniform(0.2, 0.9, size=(1, ho, wo, N))
        kernel = rng.normal(size=(K, K, cin, cout))
        cot = rng.normal(size=(1, ho, wo, cout))
        args = [jnp.asarray(a, jnp.float64) for a in (x, off, mask, kernel)]

        def loss(x, off, mask, kernel):
            y = deform_conv2d(x, off, mask, kernel, stride=1, padding=padding)
            return jnp.sum(y * cot)

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
        eps = 1e-6
        for pos, (a, g) in enumerate(zip(args, grads)):
            assert g.dtype == jnp.float64
            basis = jnp.eye(a.size, dtype=jnp.float64).reshape((a.size,) + a.shape)

            one_sided = integer_offsets and pos == 1

            def f_dir(e, pos=pos, one_sided=one_sided):
                plus = list(args)
                minus = list(args)
                plus[pos] = args[pos] + eps * e
                if one_sided:
                    return (loss(*plus) - loss(*args)) / eps
                minus[pos] = args[pos] - eps * e
                return (loss(*plus) - loss(*minus)) / (2 * eps)

            fd = jax.jit(jax.vmap(f_dir))(basis).reshape(a.shape)
            np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-7)
            assert np.abs(np.asarray(g)).max() > 1e-3
        # samples clamped outside the map pass no gradient to their offsets
        g_off = np.asarray(grads[1])
        assert (g_off == 0).any()


# ----------------------------------------------------------------------------------------
# (e) jit, vmap, bf16
# ----------------------------------------------------------------------------------------


def test_bf16_and_vmap(op):
    x, off, mask, kernel = random_problem(30, off_scale=1.5)
    ref = np.asarray(op(x, off, mask, kernel, stride=1, padding=1))
    got = op(x.astype(jnp.bfloat16), off, mask, kernel.astype(jnp.bfloat16),
             stride=1, padding=1, dtype=jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got.astype(jnp.float32))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2

    # vmap over an extra leading axis equals a loop
    xs, offs, masks = (np.stack([a, a[::-1] * 0.5]) for a in (x, off, mask))
    vm = jax.jit(jax.vmap(lambda a, o, m: deform_conv2d(a, o, m, kernel)))(xs, offs, masks)
    for s in range(2):
        np.testing.assert_allclose(
            np.asarray(vm[s]), np.asarray(op(xs[s], offs[s], masks[s], kernel)), rtol=1e-5, atol=1e-5
        )


# ----------------------------------------------------------------------------------------
# Flax module
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_setup():
    cin, cout, h, w = 3, 4, 6, 5
    model = ModulatedDeformConv(cout)
    x = jnp.asarray(np.random.default_rng(40).normal(size=(2, h, w, cin)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    return model, x, variables


def test_module_parameters_and_official_init(module_setup):
    model, x, variables = module_setup
    params = variables["params"]
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    assert shapes == {
        "p_conv": {"kernel": (3, 3, 3, 18), "bias": (18,)},
        "m_conv": {"kernel": (3, 3, 3, 9), "bias": (9,)},
        "conv": {"kernel": (3, 3, 3, 4)},
    }
    assert np.all(np.asarray(params["p_conv"]["kernel"]) == 0.0)
    assert np.all(np.asarray(params["m_conv"]["kernel"]) == 0.5)
    bound = 1 / np.sqrt(27)
    for name in ("p_conv", "m_conv"):
        bias = np.asarray(params[name]["bias"])
        assert np.all(np.abs(bias) <= bound) and np.std(bias) > 0
    assert np.abs(np.asarray(params["conv"]["kernel"])).max() <= bound
    y = model.apply(variables, x)
    assert y.shape == (2, 6, 5, 4) and y.dtype == jnp.float32


def test_module_matches_official_reference(module_setup):
    """Official-layout (OIHW) weights loaded into the module give the reference output."""
    model, x, _ = module_setup
    rng = np.random.default_rng(41)
    cin, cout = 3, 4
    w_p = (rng.normal(size=(18, cin, 3, 3)) * 0.6).astype(np.float32)  # offsets of a few px
    b_p = rng.normal(size=(18,)).astype(np.float32)
    w_m = (rng.normal(size=(9, cin, 3, 3)) * 0.3).astype(np.float32)
    b_m = rng.normal(size=(9,)).astype(np.float32)
    w_c = (rng.normal(size=(cout, cin, 3, 3)) / 5).astype(np.float32)
    hwio = lambda a: jnp.asarray(np.transpose(a, (2, 3, 1, 0)))
    params = {
        "p_conv": {"kernel": hwio(w_p), "bias": jnp.asarray(b_p)},
        "m_conv": {"kernel": hwio(w_m), "bias": jnp.asarray(b_m)},
        "conv": {"kernel": hwio(w_c)},
    }
    got = np.asarray(model.apply({"params": params}, x))

    xn = to_nchw(x)
    off = conv2d_nchw(xn, w_p, b_p, 1, 1)
    m = 1 / (1 + np.exp(-conv2d_nchw(xn, w_m, b_m, 1, 1)))
    assert np.abs(off).max() > 3  # some samples leave the map
    want = reference_deform_conv(xn, off, m, w_c, 1, 1)
    np.testing.assert_allclose(to_nchw(got), want, rtol=1e-5, atol=1e-5)

    # applied twice with the same weights (TogetherNet's DTFE)
    model_sq = ModulatedDeformConv(cin)
    w_sq = (rng.normal(size=(cin, cin, 3, 3)) / 5).astype(np.float32)
    params_sq = dict(params, conv={"kernel": hwio(w_sq)})
    y2 = model_sq.apply({"params": params_sq}, model_sq.apply({"params": params_sq}, x))
    assert y2.shape == x.shape and np.isfinite(np.asarray(y2)).all()


def test_module_lr_ratio_scales_side_gradients(module_setup):
    _, x, variables = module_setup
    rng = np.random.default_rng(42)
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, jnp.float32), variables["params"]
    )

    def grads(ratio):
        m = ModulatedDeformConv(4, lr_ratio=ratio)
        return jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2))(params)

    g1, g01 = grads(1.0), grads(0.1)
    np.testing.assert_allclose(
        np.asarray(g01["conv"]["kernel"]), np.asarray(g1["conv"]["kernel"]), rtol=1e-6
    )
    for name in ("p_conv", "m_conv"):
        for leaf in ("kernel", "bias"):
            a, b = np.asarray(g01[name][leaf]), np.asarray(g1[name][leaf])
            assert np.abs(b).max() > 1e-4
            np.testing.assert_allclose(a, 0.1 * b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    # forward value is untouched
    np.testing.assert_array_equal(np.asarray(scale_gradient(x, 0.1)), np.asarray(x))


def test_module_bf16(module_setup):
    model, x, variables = module_setup
    ref = np.asarray(model.apply(variables, x))
    y = ModulatedDeformConv(4, dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    y = np.asarray(y.astype(jnp.float32))
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 2e-2


# ----------------------------------------------------------------------------------------
# (f) errors
# ----------------------------------------------------------------------------------------


def test_shape_errors():
    x, off, mask, kernel = random_problem(50)
    msg = r"offsets must have shape .*\(2, 6, 5, 18\).*got \(2, 6, 5, 9\)"
    with pytest.raises(ValueError, match=msg):
        deform_conv2d(x, off[..., :9], mask, kernel)
    with pytest.raises(ValueError, match="offsets must have shape"):
        deform_conv2d(x, off, mask, kernel, stride=2)
    with pytest.raises(ValueError, match=r"mask must have shape .*\(2, 6, 5, 9\)"):
        deform_conv2d(x, off, mask[..., :4], kernel)
    with pytest.raises(ValueError, match="kernel must be"):
        deform_conv2d(x, off, mask, kernel[:, :, :2])
    with pytest.raises(ValueError, match="odd k"):
        deform_conv2d(x, off, mask, kernel[:2, :2])
    with pytest.raises(ValueError, match="x must be"):
        deform_conv2d(x[0], off, mask, kernel)
    with pytest.raises(ValueError, match="stride must be"):
        deform_conv2d(x, off, mask, kernel, stride=0)
    with pytest.raises(ValueError, match="padding must be"):
        ModulatedDeformConv(4, padding=0).init(jax.random.PRNGKey(0), jnp.asarray(x))
