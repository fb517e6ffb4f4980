"""The official depth-guided dehazing weights through the ordinary entry points:
``load_official("depth_dehaze", ...)`` and ``convert --method depth_dehaze`` into a
workdir that evaluate and predict load."""

import jax
import numpy as np

from adverse_vision import trainer as trainer_lib
from adverse_vision.convert import export_workdir, load_official, reference_state_dict
from tests.helpers import reference

REFERENCE = "sdg_multinet_seed0_64x96_b1.npz"


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_load_official_and_a_converted_workdir_reproduce_the_official_network(tmp_path):
    ref = np.load(reference(REFERENCE))
    hazy = np.transpose(ref["hazy_nchw"], (0, 2, 3, 1))
    expected = np.transpose(ref["dehazed_nchw"], (0, 2, 3, 1))
    model, variables = load_official("depth_dehaze", reference_state_dict(ref))
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, hazy)
    assert _rel(out["dehazed"], expected) < 1e-5

    # The official network as a workdir of the method (the config's default network).
    summary = export_workdir(reference(REFERENCE), "depth_dehaze", str(tmp_path / "w"))
    assert summary["method"] == "depth_dehaze"
    trainer, restored, step = trainer_lib.restore_for_eval(str(tmp_path / "w"))
    assert step == 0
    ours = jax.jit(lambda v, x: trainer.method.run(v, x))(restored, hazy)
    # run() reads the tanh output as an image in [0, 1], as the official test does.
    np.testing.assert_allclose(ours["dehazed"], np.clip(out["dehazed"], 0, 1), atol=1e-6)
    np.testing.assert_allclose(ours["inv_depth"], out["inv_depth"], atol=1e-6)
