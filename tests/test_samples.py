"""samples: a run's validation inputs written as the files predict reads."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from adverse_vision import methods, samples
from adverse_vision.methods.dnhl.stages import eval_noise
from configs import bdlf_scenes, dnhl_scenes_cls, sdg_scenes


def _read(path):
    return np.asarray(Image.open(path))


def test_hazy_inputs_with_their_clear_images(tmp_path):
    cfg = sdg_scenes.get_config("smoke")
    paths = samples.write_samples(cfg, str(tmp_path), count=3)
    assert [os.path.basename(p) for p in paths] == ["0000.png", "0001.png", "0002.png"]
    hazy, clear = _read(tmp_path / "0001.png"), _read(tmp_path / "clear" / "0001.png")
    assert hazy.shape == clear.shape == (cfg.image_size, cfg.image_size, 3)
    assert hazy.mean() > clear.mean()  # haze brightens
    none = samples.write_samples(cfg, str(tmp_path / "none"), count=1, degrade="none")
    np.testing.assert_array_equal(_read(none[0]), _read(tmp_path / "clear" / "0000.png"))


def test_infrared_goes_where_predict_reads_it(tmp_path):
    samples.write_samples(bdlf_scenes.get_config("smoke"), str(tmp_path), count=2)
    assert sorted(os.listdir(tmp_path)) == ["0000.png", "0001.png", "clear", "infrared"]
    assert _read(tmp_path / "infrared" / "0001.png").ndim == 2  # one channel


def test_a_method_that_degrades_on_the_device_writes_its_own_input(tmp_path):
    cfg = dnhl_scenes_cls.get_config("smoke,denoise")
    samples.write_samples(cfg, str(tmp_path), count=2)
    noisy, clean = _read(tmp_path / "0001.png"), _read(tmp_path / "clear" / "0001.png")
    expected = eval_noise(jnp.asarray(clean[None], jnp.float32) / 255.0,
                          jnp.float32(cfg.dnhl.val_sigma), jnp.asarray([1]), clip=True)
    np.testing.assert_allclose(noisy, np.round(np.asarray(expected[0]) * 255.0), atol=1)
    assert np.abs(noisy.astype(float) - clean).mean() > 10  # sigma 50


def test_a_classifier_stage_has_no_prediction_for_files():
    method = methods.build(dnhl_scenes_cls.get_config("smoke,high"))
    with pytest.raises(ValueError, match="'high' stage run has no denoiser"):
        method.predict_fn(restore=False)


def test_the_program_wants_one_source_of_config(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adverse_vision.samples", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "give --workdir" in proc.stderr
    with pytest.raises(ValueError, match="--count must be positive"):
        samples.write_samples(sdg_scenes.get_config("smoke"), str(tmp_path), count=0)
