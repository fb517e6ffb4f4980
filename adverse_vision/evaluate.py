r"""Evaluate a trained workdir.

  python -m adverse_vision.evaluate --workdir runs/tiny [--split test] [--checkpoint latest]

The config saved in the workdir rebuilds the model and the data; ``--split`` picks the
evaluation split (``val`` or ``test``) of the configured dataset. Detection runs print
the per-class AP table and mAP@0.5 (TogetherNet adds the PSNR of its restoration);
DN-HL runs print the comparison of :mod:`adverse_vision.methods.dnhl_eval` over the
configured noise levels (``--images FOLDER`` adds whole-image PSNR / SSIM by tiled
inference). BDLF runs print the fusion metrics of the fused images, then the mAP@0.5
table of the detector and the mIoU of the segmenter on them.
"""

from __future__ import annotations

import json

from absl import flags

from adverse_vision import cli
from adverse_vision import parallel

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_SPLIT = flags.DEFINE_enum("split", "val", ["val", "test"], "Which split to evaluate.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "The best checkpoint by the validation metric, or the latest.")
_DEGRADE = flags.DEFINE_string("degrade", None, "Override the evaluation degradation "
                               "(e.g. 'none' for clear images).")
_IMAGES = flags.DEFINE_string("images", None, "DN-HL: also score the denoisers on the whole "
                              "images of this folder (tiled inference).")
flags.mark_flags_as_required(["workdir"])


def main() -> int:
    cli.check_path(_WORKDIR.value, "--workdir", write=False)
    parallel.maybe_initialize_distributed()
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    trainer, variables, step = trainer_lib.restore_for_eval(_WORKDIR.value, _CHECKPOINT.value)
    cfg = trainer.cfg
    if _DEGRADE.value is not None:
        with cfg.unlocked():
            del cfg.data["val_degrade"]  # it may hold a tuple of specs
            cfg.data.val_degrade = {"name": _DEGRADE.value}
    per_host = parallel.per_host_batch_size(cfg.eval_batch_size or cfg.batch_size, trainer.mesh)
    data = factory.DataBundle(cfg, per_host_batch=per_host)
    if cfg.method == "dnhl":
        from adverse_vision.methods import dnhl_eval  # pylint: disable=import-outside-toplevel
        rows, table = dnhl_eval.report(trainer, variables, data, _SPLIT.value, _IMAGES.value)
        print(f"checkpoint step {step} ({_CHECKPOINT.value}), split {_SPLIT.value}, "
              f"DN-HL stage {cfg.dnhl.stage}")
        print(table)
        print(json.dumps({"step": step, "split": _SPLIT.value, "rows": rows}))
        return 0
    metrics, evaluator = trainer.evaluate(variables, data.val_pipeline(_SPLIT.value))
    specs = cfg.data.val_degrade if isinstance(cfg.data.val_degrade, tuple) else (cfg.data.val_degrade,)
    print(f"checkpoint step {step} ({_CHECKPOINT.value}), split {_SPLIT.value}, "
          f"degradation {' or '.join(str(dict(s)['name']) for s in specs)}")
    print(evaluator.table())
    print(json.dumps({"step": step, "split": _SPLIT.value, **metrics}))
    return 0


if __name__ == "__main__":
    cli.run(main)
