"""breakdown: a compiled program's time split by stage, forward and backward, from a
profiler trace of its own operations; and the same for a PyTorch callable."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from adverse_vision import breakdown, versus
from adverse_vision.breakdown import Span
from adverse_vision.trainer import LOSS_SCOPE, OPTIMIZER_SCOPE
from tests.helpers import bdlf_smoke_config, smoke_config


@pytest.mark.parametrize("op_name, depth, expected", [
    ("jit(_step)/loss/jvp(Net)/Net.features/backbone/dark2/conv/conv_general_dilated", 1,
     ("backbone", "forward")),
    ("jit(_step)/loss/jvp(Net)/Net.features/Net.features/backbone/dark2/conv/add", 2,
     ("backbone/dark2", "forward")),
    ("jit(_step)/loss/transpose(jvp(Net))/Net.restoration/decoder/up1/mul", 1,
     ("decoder", "backward")),
    ("jit(_step)/loss/transpose(loss)/jvp(Net)/Net.restoration/decoder/mul", 1,
     ("decoder", "backward")),
    ("jit(_step)/loss/jvp(Net)/Net.features/tanh", 1, ("(Net)", "forward")),
    ("jit(_step)/loss/jvp(Net)/decoder/decoder.up/Hh,bhwc->bHwc/dot_general", 2,
     ("decoder", "forward")),
    ("jit(_step)/loss/jvp(Net)/decoder/checkpoint(Block)/Conv_0/conv", 2,
     ("decoder/Conv_0", "forward")),
    ("jit(predict)/Net/backbone/stem/conv_general_dilated", 1, ("backbone", "forward")),
    ("jit(_step)/loss/jvp(vmap())/top_k", 1, ("loss", "forward")),
    ("jit(_step)/loss/transpose(jvp())/mul", 1, ("loss", "backward")),
    ("jit(_step)/optimizer/sqrt", 1, ("optimizer", "update")),
    ("jit(_step)/reduce_sum", 1, ("other", "update")),
])
def test_an_operation_is_named_by_its_module_path_and_direction(op_name, depth, expected):
    assert breakdown.stage_of(op_name, depth) == expected


def test_a_prediction_s_own_operations_are_its_forward_pass():
    assert breakdown.stage_of("jit(predict)/vmap()/top_k", train=False) == ("other", "forward")


def test_concurrent_operations_share_each_instant_equally():
    shares = breakdown.wall_shares([Span("a", 0, 10), Span("b", 5, 15), Span("c", 20, 22),
                                    Span("empty", 30, 30)])
    assert shares.per_name == {"a": 7.5, "b": 7.5, "c": 2.0}
    assert shares.busy_ns == 17 and shares.overlapped_ns == 5


_HLO = """HloModule jit__step, entry_computation_layout={()->f32[]}

%fused_computation (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %neg = f32[4]{0} negate(%param_0), metadata={op_name="jit(_step)/loss/jvp(Net)/body/neg"}
}

%plain (param_0.1: f32[4]) -> f32[4] {
  %param_0.1 = f32[4]{0} parameter(0)
  ROOT %copy.1 = f32[4]{0} copy(%param_0.1)
}

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %copy.2 = f32[4]{1,0} copy(%p)
  %fusion = f32[4]{0} fusion(%copy.2), kind=kLoop, calls=%fused_computation
  %wrapped = f32[4]{0} fusion(%fusion), kind=kLoop, calls=%plain
  %while.3 = (f32[4], s32[]) while(%tuple), condition=%cond, body=%body
  ROOT %sub = f32[4]{0} subtract(%wrapped, %fusion), metadata={op_name="jit(_step)/optimizer/sub"}
}
"""


def test_operations_without_a_name_stack_take_their_neighbours():
    program = breakdown.Program.from_hlo(_HLO)
    assert program.module == "jit__step" and program.trains
    assert program.op_names["fusion"] == "jit(_step)/loss/jvp(Net)/body/neg"  # its computation's
    assert program.op_names["copy.2"] == program.op_names["fusion"]  # its user's
    assert program.op_names["wrapped"] == program.op_names["fusion"]  # its operand's, not the update
    assert program.control == {"while.3"}
    seconds, overlapped = breakdown.attribute(
        program, [Span("fusion", 0, 4e9), Span("copy.2", 0, 2e9), Span("sub", 4e9, 5e9),
                  Span("while.3", 0, 5e9), Span("unknown", 5e9, 6e9)])
    assert seconds == {("body", "forward"): 4.0, ("optimizer", "update"): 1.0,
                       ("other", "forward"): 1.0}
    assert overlapped == 2.0
    with pytest.raises(ValueError, match="not an HLO module"):
        breakdown.Program.from_hlo("hello")


_GRADIENT_HLO = """HloModule jit__step, entry_computation_layout={()->f32[]}

ENTRY %main (x: f32[4], w: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0), metadata={op_name="x"}
  %w = f32[4]{0} parameter(1), metadata={op_name="state.params[\\'head\\'][\\'kernel\\']"}
  %dy = f32[4]{0} negate(%x), metadata={op_name="jit(_step)/loss/transpose(jvp(Net))/head/neg"}
  %copy.5 = f32[4]{0} copy(%w), metadata={op_name="state.params[\\'head\\'][\\'kernel\\']"}
  %dx = f32[4]{0} multiply(%dy, %copy.5), metadata={op_name="jit(_step)/loss/transpose(jvp(Net))/head/mul"}
  %t = f32[4]{0} transpose(%dy), dimensions={0}
  %dw = f32[4]{0} convolution(%t, %x)
  %norm = f32[] reduce(%dw, %zero), dimensions={0}, to_apply=%add, metadata={op_name="jit(_step)/reduce_sum"}
  ROOT %upd = f32[4]{0} subtract(%dw, %dx), metadata={op_name="jit(_step)/optimizer/sub"}
}
"""


def test_a_gradient_and_a_parameter_s_copy_are_their_module_s_not_the_norm_s():
    """A kernel gradient XLA left without a name stack, whose users are the gradient
    norm and the update, is named after its operands (the module's backward pass), not
    filed under ``other``; a copy of a parameter (named by its argument path) after the
    operation that reads it."""
    program = breakdown.Program.from_hlo(_GRADIENT_HLO)
    backward = "jit(_step)/loss/transpose(jvp(Net))/head"
    assert program.op_names["t"] == program.op_names["dw"] == backward + "/neg"
    assert program.op_names["copy.5"] == backward + "/mul"
    seconds, _ = breakdown.attribute(program, [Span("dw", 0, 3e9), Span("copy.5", 3e9, 4e9),
                                               Span("norm", 4e9, 5e9)])
    assert seconds == {("head", "backward"): 4.0, ("other", "update"): 1.0}


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name="stem")(x))
        x = nn.relu(nn.Conv(16, (3, 3), name="body")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def test_a_compiled_step_is_split_by_module_loss_and_update():
    net, tx = _Net(), optax.sgd(0.1)
    x = jnp.ones((2, 32, 32, 3))
    params = net.init(jax.random.key(0), x)
    opt_state = tx.init(params)

    def step(params, opt_state):
        with jax.named_scope(LOSS_SCOPE):
            loss, grads = jax.value_and_grad(lambda p: jnp.square(net.apply(p, x)).mean())(params)
        with jax.named_scope(OPTIMIZER_SCOPE):
            updates, opt_state = tx.update(grads, opt_state)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    compiled = jax.jit(step).lower(params, opt_state).compile()
    result = breakdown.profile("step", lambda: jax.block_until_ready(
        compiled(params, opt_state)), compiled.as_text(), calls=2)
    stages = set(result.seconds)
    for module in ("stem", "body", "head"):
        assert (module, "forward") in stages and (module, "backward") in stages, stages
    assert ("optimizer", "update") in stages, stages
    assert 0 < sum(result.seconds.values()) <= result.wall_s * 1.001
    text = breakdown.table([result])
    assert "| stem | backward |" in text and breakdown.OUTSIDE in text


def test_our_train_step_and_inference_are_split_by_the_network_s_parts():
    trainers, batches = versus.sides(smoke_config(batch_size=8), infer_batch=8, infer_size=64)
    results = breakdown.ours(trainers, batches, calls=1)
    assert [r.task for r in results] == ["train step", "inference"]
    train, infer = ({stage for stage, _ in r.seconds} for r in results)
    assert {"backbone", "neck", "head", "loss", "optimizer"} <= train, train
    assert {"backbone", "neck", "head"} <= infer, infer
    assert {phase for _, phase in results[1].seconds} == {"forward"}
    phases = results[0].phases
    assert results[0].summary()["phases"] == phases
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["update"] > 0


def test_a_method_s_own_program_is_split_in_its_place():
    """BDLF times its fusion network alone (Method.own_contenders): that program is split."""
    trainers, batches = versus.sides(bdlf_smoke_config(), infer_batch=8, infer_size=64)
    results = breakdown.ours(trainers, batches, calls=1)
    assert [r.task for r in results] == ["fusion train step", "fusion inference"]
    train, infer = ({stage for stage, _ in r.seconds} for r in results)
    assert {"DRDB1", "DRDB2", "loss", "optimizer"} <= train, train
    assert "detector" not in " ".join(train) and {"DRDB1", "DRDB2"} <= infer, infer
    assert ("DRDB1", "backward") in results[0].seconds


def test_the_program_refuses_what_it_cannot_do(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "adverse_vision.breakdown", "--config",
         "configs/yolox_scenes.py:smoke", "--tasks", "train step,evaluate"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --tasks: unknown ['evaluate']; the tasks of method 'detection' are "
        "['train step', 'inference']")
    proc = subprocess.run(
        [sys.executable, "-m", "adverse_vision.breakdown", "--config",
         "configs/yolox_scenes.py:smoke", f"--official={tmp_path}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: method 'detection' has no official implementation to time against")


def test_an_official_pytorch_step_is_split_by_its_named_submodules():
    torch = pytest.importorskip("torch")
    from adverse_vision import breakdown_torch  # pylint: disable=import-outside-toplevel

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3)
            self.dark = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU())

        def forward(self, x):
            return self.dark(self.stem(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Body()
            self.neck = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU())
            self.head = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            # A container called through forward() passes no hook; the neck's does.
            return torch.tanh(self.head(self.neck(self.backbone.forward(x))))

    net, loss_fn = Net(), torch.nn.MSELoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 24, 24)

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), torch.zeros(2, 2, 20, 20))
        loss.backward()
        opt.step()

    wall, seconds = breakdown_torch.profile(step, {"Net": net}, calls=2, depth=1)
    stages = set(seconds)
    for stage in ("backbone", "neck", "head"):
        assert (stage, "forward") in stages and (stage, "backward") in stages, stages
    assert ("(Net)", "backward") in stages  # the tanh, the root's own
    assert ("(MSELoss)", "forward") in stages and ("optimizer", "update") in stages
    assert 0 < sum(seconds.values()) <= wall * 1.001
    _, deeper = breakdown_torch.profile(step, {"Net": net}, calls=1, depth=2)
    assert {("backbone/stem", "forward"), ("backbone/dark", "backward"),
            ("neck/0", "forward"), ("neck/1", "backward")} <= set(deeper), deeper
