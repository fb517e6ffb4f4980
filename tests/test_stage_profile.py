"""stage_profile: one step's time per stage, from XLA's operation trace and torch.profiler."""

import jax
import jax.numpy as jnp
import pytest

from adverse_vision import stage_profile

TINY_STEP = '''
import flax.linen as nn, jax, jax.numpy as jnp, optax

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name="backbone")(x))
        return nn.Dense(4, name="head")(x.mean((1, 2)))

net, tx = Net(), optax.sgd(0.1, momentum=0.9)
x = jnp.ones((8, 32, 32, 3))
params = net.init(jax.random.key(0), x)
opt = tx.init(params)

def step(params, opt, x):
    grads = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

def stage_of(direction, path):
    return f"{path[0]} {direction}" if path else ("optimizer" if direction == "update" else "loss")

compiled = jax.jit(step).lower(params, opt, x).compile()
'''


def test_op_names_read_the_module_path_and_direction():
    assert stage_profile.split_op_name(
        "jit(step)/transpose(jvp(Net))/Net.features/backbone/dark3/conv/conv_general_dilated") == (
        "backward", ("backbone", "dark3", "conv"))
    assert stage_profile.split_op_name("jit(step)/jvp(M)/head/jit(_tap_conv)/add") == (
        "forward", ("head",))
    assert stage_profile.split_op_name("jit(step)/mul") == ("update", ())
    compiled = jax.jit(lambda x: jnp.sin(x) * 2).lower(jnp.ones(3)).compile()
    names = stage_profile.op_names(compiled.as_text())
    assert names["broadcast_multiply_fusion"] == "jit(<lambda>)/mul"  # a fusion: its root's
    assert names["x.1"] == "x"  # a parameter: its argument


def test_ours_per_stage_from_the_operation_trace():
    """Every stage of a small train step gets time from XLA's operation trace."""
    namespace = {}
    exec(TINY_STEP, namespace)  # pylint: disable=exec-used
    seconds = stage_profile.xla_stage_seconds(namespace["compiled"], lambda: (
        namespace["params"], namespace["opt"], namespace["x"]), namespace["stage_of"])
    assert {"backbone forward", "backbone backward", "head forward", "head backward",
            "optimizer"} <= {k for k, v in seconds.items() if v > 0}, seconds


def test_the_table_gives_seconds_and_shares_in_step_order():
    text = stage_profile.table({"official": {"a forward": 1.0, "loss": 3.0},
                                "ours": {"a forward": 2.0, "extra": 2.0}}, ["a forward", "loss"])
    assert text.splitlines() == [
        "| stage | official s (share) | ours s (share) |", "|---|---|---|",
        "| a forward | 1.000 (25%) | 2.000 (50%) |", "| loss | 3.000 (75%) | 0.000 (0%) |",
        "| extra | 0.000 (0%) | 2.000 (50%) |", "| total | 4.000 | 4.000 |"]


def test_torch_side_per_stage():
    """Where PyTorch is installed (no requirement of the project): forward and backward
    per stage module, the step's own ranges, each with time."""
    torch = pytest.importorskip("torch")
    body, head = torch.nn.Conv2d(3, 16, 3), torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(list(body.parameters()) + list(head.parameters()), lr=0.1)
    x = torch.randn(8, 3, 32, 32)

    def step():
        opt.zero_grad()
        y = head(torch.relu(body(x)).mean((2, 3)))
        with torch.profiler.record_function("user::loss"):
            loss = (y ** 2).sum()
        loss.backward()
        with torch.profiler.record_function("user::optimizer"):
            opt.step()

    seconds = stage_profile.torch_stage_seconds(torch, step, {"backbone": [body],
                                                              "head": [head]})
    for stage in ("backbone forward", "backbone backward", "head forward", "head backward",
                  "loss", "optimizer"):
        assert seconds.get(stage, 0) > 0, (stage, seconds)
    assert body.forward.__func__ is torch.nn.Conv2d.forward  # the wrappers are gone
