"""Config validation: unknown keys and bad values are refused, naming the key."""

import subprocess
import sys

import ml_collections
import pytest

from adverse_vision import config as config_lib
from adverse_vision import methods
from configs import yolox_scenes


def test_every_variant_validates():
    for arg in ("", "tiny", "smoke", "s", "nano,bf16", "tiny,clear", "smoke,m"):
        cfg = yolox_scenes.get_config(arg)
        assert methods.validate(cfg) is cfg


def test_variant_tokens_apply():
    cfg = yolox_scenes.get_config("tiny,bf16,clear")
    assert cfg.model.size == "tiny" and cfg.model.dtype == "bfloat16"
    assert cfg.data.degrade.name == "none" and cfg.data.val_degrade.name == "none"
    assert yolox_scenes.get_config("smoke,x").model.size == "x"


def test_unknown_variant_is_named():
    with pytest.raises(config_lib.ConfigError, match="'tiyn'.*did you mean 'tiny'"):
        yolox_scenes.get_config("tiyn")


def test_unknown_key_is_named_with_suggestion():
    cfg = yolox_scenes.get_config("smoke")
    with cfg.unlocked():
        cfg.optimizer.weight_decy = 1e-4
    with pytest.raises(config_lib.ConfigError, match=r"'optimizer\.weight_decy'.*'optimizer\.weight_decay'"):
        methods.validate(cfg)


def test_locked_config_refuses_typo_assignment():
    cfg = yolox_scenes.get_config("smoke")
    cfg.lock()
    with pytest.raises(AttributeError, match="batch_sise"):
        cfg.batch_sise = 3


@pytest.mark.parametrize("path,value,match", [
    ("image_size", 100, "multiple of 32"),
    ("total_steps", 0, "'total_steps' must be positive"),
    ("model.dtype", "float16", "'model.dtype'"),
    ("model.size", "huge", "'model.size'"),
    ("data.name", "imagenet", "'data.name'"),
    ("data.on_bad_box", "ignore", "'data.on_bad_box'"),
    ("optimizer.name", "lamb", "'optimizer.name'"),
    ("optimizer.base_lr", float("nan"), "'optimizer.base_lr' is nan; it must be a finite"),
    ("optimizer.base_lr", -1.0, r"'optimizer.base_lr' is -1.0; it must be > 0"),
    ("optimizer.base_lr", 0.0, r"'optimizer.base_lr' is 0.0; it must be > 0"),
    ("optimizer.momentum", 1.5, r"'optimizer.momentum' is 1.5; it must be in \[0.0, 1.0\]"),
    ("optimizer.ema_decay", float("inf"), "'optimizer.ema_decay' is inf"),
    ("data.max_boxes", 0, "'data.max_boxes' is 0; it must be >= 1"),
])
def test_bad_values_are_named(path, value, match):
    cfg = yolox_scenes.get_config("smoke")
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        methods.validate(cfg)


def test_degradation_parameters_are_checked():
    cfg = yolox_scenes.get_config("smoke")
    cfg.data.degrade = ml_collections.ConfigDict({"name": "haze", "betta": (0.1, 0.2)})
    with pytest.raises(config_lib.ConfigError, match=r"data\.degrade\.betta.*did you mean 'beta'"):
        methods.validate(cfg)
    cfg.data.degrade = ml_collections.ConfigDict({"name": "fog"})
    with pytest.raises(config_lib.ConfigError, match=r"data\.degrade\.name"):
        methods.validate(cfg)
    cfg.data.degrade = ml_collections.ConfigDict({"name": "noise", "sigma": (15, 25, 50)})
    methods.validate(cfg)


def test_command_line_override_of_unknown_key_fails_before_compiling(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "adverse_vision.train", "--config", "configs/yolox_scenes.py:smoke",
         "--workdir", str(tmp_path / "w"), "--config.optimizer.lr=0.1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "optimizer.lr" in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing started


def test_a_key_the_method_does_not_have_is_refused():
    """A run has the keys every run has and its method's own: another method's group, or
    a key its method does not read, is an unknown key, not a silently ignored one."""
    from tests.helpers import bdlf_smoke_config  # pylint: disable=import-outside-toplevel
    cfg = bdlf_smoke_config()
    methods.validate(cfg)
    assert "init_from" not in cfg.model and "dnhl" not in cfg
    with cfg.unlocked():
        cfg.model.init_from = "runs/yolox"
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model.init_from'"):
        methods.validate(cfg)
    cfg = yolox_scenes.get_config("smoke")
    with cfg.unlocked():
        cfg.bdlf = ml_collections.ConfigDict({"mode": "fusion_loss"})
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'bdlf'"):
        methods.validate(cfg)
    with pytest.raises(config_lib.ConfigError, match=r"'method' is 'dnlh'; no such method "
                                                     r"\(did you mean 'dnhl'\?\)"):
        methods.config("dnlh")


def test_overrides_inside_a_degradation_spec():
    cfg = yolox_scenes.get_config("smoke")
    config_lib.check_overrides(cfg, ["data.degrade.beta", "data.val_degrade.A", "seed"])
    with pytest.raises(config_lib.ConfigError,
                       match=r"unknown config key 'data.degrade.betta'.*did you mean 'data.degrade.beta'"):
        config_lib.check_overrides(cfg, ["data.degrade.betta"])
    config_lib.set_degrade_mixture(cfg, "degrade", [config_lib.degrade_spec("haze"),
                                                    config_lib.degrade_spec("none")])
    with pytest.raises(config_lib.ConfigError,
                       match=r"'data.degrade' is a mixture of 2 degradation specs"):
        config_lib.check_overrides(cfg, ["data.degrade.beta"])


def test_readme_degrade_override_is_parsed(monkeypatch):
    """README's example override of a degradation parameter passes the command-line check
    and the flag parser sets it."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    from adverse_vision import cli  # pylint: disable=import-outside-toplevel
    argv = ["train", "--config", "configs/yolox_scenes.py:smoke",
            "--config.data.degrade.beta=(0.08, 0.2)"]
    cli.check_command_line(argv[1:])
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    monkeypatch.setattr(sys, "argv", argv)  # where the config flag finds its overrides
    values(argv)
    assert tuple(values.config.data.degrade.beta) == (0.08, 0.2)
    methods.validate(values.config)
