"""A method is a one-file change: one written here, registered from this module, trains,
evaluates and predicts through the ordinary entry points, with its own config group."""

import json
import os

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from adverse_vision import config as config_lib
from adverse_vision import methods, predict
from adverse_vision import trainer as trainer_lib
from adverse_vision.config import ConfigError
from adverse_vision.data import catalog, factory


class _Clearer(nn.Module):
    """A convolution from the degraded image to the clear one."""
    kernel: int

    @nn.compact
    def __call__(self, x):
        return nn.sigmoid(nn.Conv(3, (self.kernel, self.kernel))(x))


class _Meter:
    def __init__(self):
        self.errors = []

    def add(self, outputs, batch):
        clean = np.asarray(batch["clean"], np.float64) / 255.0
        for i in np.flatnonzero(np.asarray(batch["valid"])):
            self.errors.append(np.mean(np.abs(np.asarray(outputs["clear"][i]) - clean[i])))

    def compute(self):
        return {"neg_mae": -float(np.mean(self.errors))}

    def table(self):
        return f"mean absolute error {np.mean(self.errors):.4f} over {len(self.errors)} images"


@methods.register("test_clearer")
class ClearerMethod(methods.Method):
    """Restores the clear scene from the degraded one: MSE, scored by mean error."""

    datasets = {"scenes": catalog.scenes}
    eval_keys = ("valid", "clean")
    best_metric = "neg_mae"

    @classmethod
    def defaults(cls):
        return ml_collections.ConfigDict({"clearer": {"kernel": 3}})

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        config_lib.check_choice(cfg, "clearer.kernel", (1, 3))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.model = _Clearer(int(cfg.clearer.kernel))

    def init_variables(self, rng):
        s = self.cfg.image_size
        return dict(self.model.init(rng, jnp.zeros((1, s, s, 3))))

    def loss_fn(self, params, model_state, batch, rng, step):
        out = self.model.apply({"params": params}, batch["image"] / 255.0)
        loss = jnp.mean(jnp.square(out - batch["clean"] / 255.0))
        return loss, (model_state, {"mse": loss})

    def predict(self, variables, batch):
        return {"clear": self.model.apply(variables, batch["image"] / 255.0)}

    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        return catalog.box_pipeline(bundle, source, train=train, seed=seed, data_cfg=data_cfg)

    def make_evaluator(self):
        return _Meter()

    def predict_fn(self, restore):
        return self.predict

    def prediction_images(self, outputs, i, to_original):
        return {"_clear.png": to_original(outputs["clear"][i], value_range=(0.0, 1.0))}


def _config():
    cfg = methods.config("test_clearer")
    cfg.image_size, cfg.batch_size, cfg.total_steps = 32, 8, 4
    cfg.eval_every = cfg.checkpoint_every = 4
    cfg.log_every = 2
    cfg.data.num_train, cfg.data.num_val, cfg.data.scene_size = 32, 8, 32
    cfg.data.num_workers = 0
    cfg.optimizer.name = "adamw"
    # Two evaluations: the foggy validation scenes, and the same scenes without fog.
    cfg.evals.clear = config_lib.eval_entry("val", val_degrade={"name": "none"})
    return methods.validate(cfg)


def test_its_config_group_is_validated_once_like_every_other():
    cfg = _config()
    assert cfg.clearer.kernel == 3 and "size" not in cfg.model
    cfg.clearer.kernel = 5
    with pytest.raises(ConfigError, match=r"'clearer.kernel' is 5; expected one of \(1, 3\)"):
        methods.validate(cfg)
    cfg = _config()
    with cfg.unlocked():
        cfg.clearer.kernal = 1
    with pytest.raises(ConfigError, match=r"unknown config key 'clearer.kernal' \(did you mean "
                                          r"'clearer.kernel'\?\)"):
        methods.validate(cfg)
    cfg = _config()
    cfg.data.name = "voc"
    with pytest.raises(ConfigError, match=r"method 'test_clearer' reads one of \('scenes',\)"):
        methods.validate(cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("clearer"))
    summary = trainer_lib.train_and_evaluate(_config(), workdir, progress=False)
    return workdir, summary


def test_it_trains_and_logs_each_evaluation(run):
    workdir, summary = run
    assert summary["final_step"] == 4 and summary["best_step"] == 4
    assert set(summary["evals"]) == {"val", "clear"}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if "val/neg_mae" in r]
    assert evals and "clear/neg_mae" in evals[-1]
    assert evals[-1]["clear/neg_mae"] != evals[-1]["val/neg_mae"]
    # Each evaluation reads its own data: the same scenes, without fog for "clear".
    bundle = factory.DataBundle(_config(), per_host_batch=8)
    foggy, clear = (next(iter(bundle.eval_pipeline(name))) for name in ("val", "clear"))
    np.testing.assert_array_equal(clear["image"], clear["clean"])
    np.testing.assert_array_equal(foggy["clean"], clear["clean"])
    assert np.abs(foggy["image"].astype(int) - foggy["clean"]).mean() > 3


def test_it_evaluates_and_predicts_from_its_workdir(run, tmp_path):
    workdir, summary = run
    trainer, variables, step = trainer_lib.restore_for_eval(workdir)
    assert step == 4 and isinstance(trainer.method, ClearerMethod)
    from adverse_vision import evaluate  # pylint: disable=import-outside-toplevel
    results = evaluate.evaluate_workdir(workdir)
    assert {r["eval"] for r in results} == {"val", "clear"}
    by_name = {r["eval"]: r for r in results}
    np.testing.assert_allclose(by_name["val"]["neg_mae"], summary["evals"]["val"]["neg_mae"],
                               rtol=1e-6)

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(images / "a.png")
    out = predict.predict_folder(workdir, str(images), str(tmp_path / "out"))
    assert out["images"] == 1
    written = np.asarray(Image.open(tmp_path / "out" / "a_clear.png"))
    assert written.shape == (20, 30, 3)
    assert not os.path.exists(tmp_path / "out" / "a.json")  # it detects nothing


def _networks(method):
    """The trained networks of a built-in method that take ``remat``."""
    found = [getattr(method, name, None) for name in ("model", "denoiser", "fusion")]
    det = getattr(method, "det", None)
    found.append(getattr(det, "model", None))
    return [net for net in found if isinstance(net, nn.Module) and hasattr(net, "remat")]


def test_every_method_passes_model_remat_to_its_networks():
    from configs import sdg_scenes, togethernet_scenes  # pylint: disable=import-outside-toplevel
    from tests.helpers import bdlf_smoke_config, dnhl_smoke_config, smoke_config
    built = {"detection": smoke_config(), "togethernet": togethernet_scenes.get_config("smoke"),
             "dnhl": dnhl_smoke_config("joint"), "bdlf": bdlf_smoke_config(),
             "depth_dehaze": sdg_scenes.get_config("smoke")}
    assert set(built) <= set(methods.names())
    for name, cfg in built.items():
        for remat in (False, True):
            cfg.model.remat = remat
            nets = _networks(methods.build(cfg))
            assert nets and all(net.remat == remat for net in nets), (name, remat, nets)
