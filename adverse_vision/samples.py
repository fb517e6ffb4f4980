r"""Write a few images of a run's evaluation data as files: the inputs ``predict`` reads.

  python -m adverse_vision.samples --workdir runs/tn_tiny --out samples/ [--count 4] \
      [--split val] [--degrade noise]

With the workdir's config (``--config`` instead: any config file), the first ``--count``
images of the split, as the evaluation sees them (letterboxed to ``image_size``,
degraded by the evaluation's degradation, which ``--degrade`` replaces), are written to
``--out`` as ``<n>.png``, ``n`` = 0000, 0001, ...; beside them ``clear/<n>.png``, the
same images without the degradation, where the data has them; and for methods that
read an infrared image with each visible one (``predict --infrared``),
``infrared/<n>.png``. A method that degrades its input on the device writes that input
(``Method.evaluation_images``: e.g. a denoiser's validation noise, quantised to 8 bits).
Nothing is trained or restored: this reads data only.
"""

from __future__ import annotations

from typing import Optional

import jax
import ml_collections
import numpy as np

from adverse_vision import cli, storage
from adverse_vision import evaluate as evaluate_lib
from adverse_vision import predict as predict_lib
from adverse_vision import workdir as workdir_lib


#: image (``Method.evaluation_images`` key) -> sub-folder of ``--out`` (``""``: the folder
#: itself); a method's other ``predict_inputs`` go to a folder of their own name.
FOLDERS = {"image": "", "clean": "clear", "thermal": "infrared"}


def _save(array: np.ndarray, path: str) -> None:
    image = np.asarray(array)
    if image.dtype != np.uint8:
        raise ValueError(f"samples: expected uint8 images, got {image.dtype} for {path}")
    predict_lib.save_image(image[..., 0] if image.shape[-1] == 1 else image, path)


def write_samples(cfg: ml_collections.ConfigDict, out: str, count: int = 4, split: str = "val",
                  degrade: Optional[str] = None) -> list[str]:
    """Writes the samples (see the module docstring); returns the paths of the inputs.

    Raises:
      ValueError: ``count`` is not positive, or the split has no valid image.
    """
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    from adverse_vision import methods  # pylint: disable=import-outside-toplevel
    if count < 1:
        raise ValueError(f"--count must be positive, got {count}")
    cfg = cfg.copy_and_resolve_references()
    evaluate_lib.select_evals(cfg, degrade=degrade)
    method = methods.build(cfg)
    bundle = factory.DataBundle(cfg, per_host_batch=min(count, int(cfg.batch_size)),
                                method=method)
    written: list[str] = []
    for batch in bundle.val_pipeline(split):
        images = method.evaluation_images(batch)
        for i in np.flatnonzero(np.asarray(batch["valid"])):
            name = f"{len(written):04d}.png"
            for key, image in images.items():
                folder = storage.join(out, FOLDERS.get(key, key)) if FOLDERS.get(key, key) else out
                storage.makedirs(folder)
                _save(image[i], storage.join(folder, name))
            written.append(storage.join(out, name))
            if len(written) == count:
                return written
    if not written:
        raise ValueError(f"samples: the {split} split of {cfg.data.name} has no valid image")
    return written


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("workdir", None, "A training workdir (its config is used).")
    flags.DEFINE_string("out", None, "Output folder (created when missing).")
    flags.DEFINE_integer("count", 4, "How many images.")
    flags.DEFINE_enum("split", "val", ["val", "test"], "The split to read.")
    flags.DEFINE_string("degrade", None, "Replace the evaluation degradation (e.g. 'noise', "
                        "'none').")
    cli.define_config_flag()
    flags.mark_flags_as_required(["out"])


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    if (f.workdir is None) == (f.config is None):
        raise ValueError("give --workdir (a training workdir) or --config (a config file), "
                         "one of them")
    if f.workdir is not None:
        cli.check_path(f.workdir, "--workdir", write=False)
        cfg = workdir_lib.load_config(f.workdir)
    else:
        cfg = f.config
    cli.check_path(f.out, "--out")
    if jax.process_index() != 0:
        return 0
    paths = write_samples(cfg, f.out, f.count, f.split, f.degrade)
    print(f"{len(paths)} images of the {f.split} split in {f.out}")
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
