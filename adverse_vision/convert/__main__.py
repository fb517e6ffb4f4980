r"""Turn an official checkpoint into a project workdir.

  python -m adverse_vision.convert --from official.pth --method NETWORK --out runs/official
  python -m adverse_vision.evaluate --workdir runs/official

``--from`` takes a ``.pth``/``.pt`` checkpoint (read without PyTorch; a ``module.``
prefix and weights nested under ``model``/``state_dict`` are handled) or an ``.npz``.
``--method`` names the official network; the method that declares its converter
(``Method.converters``) gives the key rules and the config. The workdir gets the
resolved ``config.json`` and a step-0 checkpoint with the converted weights. The
config is ``--config`` (with ``--config.key=value`` overrides) or, by default, the
config file the converter names, at the model size read from the checkpoint;
``--size`` overrides either. For networks built with classes, the class names are
the config's when the count fits, COCO's for an 80-class checkpoint, or
``--class_names``. Every checkpoint tensor must fit the model: an unused key, a
missing variable or another shape is an error naming them. To fine-tune the
converted weights, start a new run with ``--config.model.init_from=<out>`` (the
workdir holds no data-iterator state, so it is not resumed as a run).
"""

from __future__ import annotations

from absl import flags

from adverse_vision import cli

_FROM = flags.DEFINE_string("from", None, "Official checkpoint (.pth, .pt or .npz).")
_METHOD = flags.DEFINE_string("method", None, "The official network of the checkpoint (one "
                               "that a method declares a converter for).")
_OUT = flags.DEFINE_string("out", None, "Workdir to write (config.json and checkpoints/).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Class count the checkpoint must "
                                    "have (default: read from its class head).")
_SIZE = flags.DEFINE_string("size", None, "Model size (nano, tiny, s, m, l, x); default: "
                            "inferred from the checkpoint.")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "Comma-separated class names (default: "
                                 "the config's, or COCO's for 80 classes).")
_CONFIG = cli.define_config_flag()
flags.mark_flags_as_required(["from", "method", "out"])


def main() -> int:
    cli.check_path(_OUT.value, "--out")
    from adverse_vision.convert import pretrained  # pylint: disable=import-outside-toplevel
    summary = pretrained.export_workdir(
        _FROM.value, _METHOD.value, _OUT.value, num_classes=_NUM_CLASSES.value,
        size=_SIZE.value, config=_CONFIG.value, class_names=_CLASS_NAMES.value)
    what = f"method {summary['method']}"
    if summary["num_classes"] is not None:
        what += f", size {summary['size']}, {summary['num_classes']} classes"
    print(f"converted {summary['checkpoint']}: {what}")
    print(f"loaded {summary['tensors_loaded']} tensors, {summary['parameters']:,} parameters")
    print(f"wrote {summary['config']} and {summary['checkpoint_dir']}")
    print(f"evaluate with: python -m adverse_vision.evaluate --workdir {summary['workdir']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
