"""The compiler options of the project's programs: on CPU, convolutions are XLA's own
(not YNNPACK's), results equal the default compilation's, and the user's XLA_FLAGS or a
jaxlib without the option leave the default."""

import re

import jax
import numpy as np
import pytest

from adverse_vision import xla_options


def _conv_and_gradients(x, w):
    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.numpy.sum(jax.nn.silu(y) ** 2)
    return jax.grad(loss, (0, 1))(x, w)


def _library_convolutions(hlo: str) -> int:
    """Convolutions inside a YNNPACK or XNNPACK fusion of a compiled program's HLO."""
    fused = set(re.findall(r"kind=kCustom, calls=(%[\w.\-]+).*__[xy]nn_fusion", hlo))
    count, inside = 0, False
    for line in hlo.splitlines():
        if re.match(r"^(%[\w.\-]+) ", line):
            inside = line.split()[0] in fused
        elif inside and " convolution(" in line:
            count += 1
    return count


@pytest.fixture(scope="module")
def operands():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 16, 16, 32), np.float32),
            0.1 * rng.standard_normal((3, 3, 32, 32), np.float32))


def test_convolutions_are_xla_own_and_equal_the_default(operands):
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for the CPU")
    options = xla_options.compiler_options()
    assert options == {xla_options.YNN_FUSION_FLAG: ",".join(xla_options.YNN_FUSION_TYPES)}
    ours = xla_options.jit(_conv_and_gradients).lower(*operands).compile()
    default = jax.jit(_conv_and_gradients).lower(*operands).compile()
    assert _library_convolutions(ours.as_text()) == 0
    for a, b in zip(ours(*operands), default(*operands)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-4 * float(np.abs(b).max()))


def test_library_convolutions_are_found_in_hlo():
    hlo = """
%fused_computation.3 (p: f32[1,4,4,2], q: f32[3,3,2,2]) -> f32[1,4,4,2] {
  ROOT %c = f32[1,4,4,2]{3,2,1,0} convolution(%p, %q), window={size=3x3 pad=1_1x1_1}
}

%fused_computation.4 (p: f32[8]) -> f32[] {
  ROOT %r = f32[] reduce(%p, %z), dimensions={0}, to_apply=%add
}

ENTRY %main (a: f32[1,4,4,2], b: f32[3,3,2,2]) -> f32[1,4,4,2] {
  %ynn_fusion = f32[1,4,4,2]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.3, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %plain = f32[1,4,4,2]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}
}
"""
    assert _library_convolutions(hlo) == 1


def test_xla_flags_of_the_user_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_FUSION_FLAG}=dot")
    assert xla_options.compiler_options() == {}


def test_an_option_the_compiler_rejects_is_left_out():
    assert not xla_options._accepted((("xla_cpu_no_such_option_here", "1"),))  # pylint: disable=protected-access
    assert not xla_options._accepted(((xla_options.YNN_FUSION_FLAG, "NOT_A_FUSION_TYPE"),))  # pylint: disable=protected-access


def test_the_trainer_compiles_its_programs_with_the_options():
    from adverse_vision import parallel  # pylint: disable=import-outside-toplevel
    from adverse_vision.trainer import Trainer  # pylint: disable=import-outside-toplevel
    from tests.helpers import smoke_config  # pylint: disable=import-outside-toplevel
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for the CPU")
    trainer = Trainer(smoke_config())
    batch = parallel.global_batch(trainer.first_batch(), trainer.mesh)
    compiled = trainer.predict.lower(trainer.abstract_state().eval_variables(), batch).compile()
    assert _library_convolutions(compiled.as_text()) == 0
    assert " convolution(" in compiled.as_text()
