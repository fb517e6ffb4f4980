"""DN-HL's comparison table: the high-level metric and the denoising quality on noisy
input, on the MSE-only denoiser's output and on the jointly trained denoiser's output.

``python -m adverse_vision.evaluate --workdir RUN`` prints :func:`report` for DN-HL runs:

* a ``joint`` run: per sigma of ``dnhl.eval_sigmas``, three rows (noisy input, the
  MSE-only denoiser named by the run's ``model.init_from``, the joint denoiser), each
  with the frozen network's top-1 / top-5 or mIoU / pixel accuracy and, for the
  denoisers, PSNR and SSIM on the 0-255 scale;
* a ``denoise`` run: per sigma, the noisy input and the denoiser (PSNR, SSIM);
* a ``high`` run: clean images, then noisy input per sigma.

With ``images`` (a folder of images of any size, e.g. Kodak or CBSD68) the denoisers are
also scored on whole images by tiled inference (``dnhl.tile``, ``dnhl.tile_stride``,
overlaps averaged), with noise drawn from a generator seeded by the image's position.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from adverse_vision import xla_options
from adverse_vision.methods.dnhl.stages import DENOISER_KEYS, MAX_PSNR, load_stage
from adverse_vision.metrics.image import psnr, ssim
from adverse_vision.models.dnhl import denoiser_crop
from adverse_vision.ops.tiles import tiled_apply

#: Seeds the noise of the whole-image evaluation (one generator per image position).
IMAGE_NOISE_SEED = 0x1A6E


def _pass(trainer, fn, data, entry: str) -> dict[str, float]:
    """One pass of ``fn(batch) -> outputs`` over the evaluation ``entry``."""
    metrics, _ = trainer.evaluate(None, data.eval_pipeline(entry), predict=fn)
    return metrics


def _denoisers(trainer, variables) -> list[tuple[str, dict[str, Any]]]:
    """(row name, denoiser variables) of a run: its own denoiser, and for a joint run
    first the MSE-only denoiser it started from."""
    method = trainer.method
    den, _ = method.split_variables(variables)
    if method.stage == "denoise":
        return [("denoiser", den)]
    if method.stage == "joint":
        return [("MSE-only denoiser", load_mse_denoiser(trainer.cfg)), ("joint denoiser", den)]
    return []


def _rows(trainer, variables, data, entry: str, sigmas, denoisers) -> list[dict[str, Any]]:
    method = trainer.method
    _, high = method.split_variables(variables)
    with_den = xla_options.jit(lambda d, h, b, s: method.run(d, h, b, s))
    no_den = xla_options.jit(lambda h, b, s: method.run(None, h, b, s))
    rows = []
    if method.stage == "high":
        clean = xla_options.jit(
            lambda h, b: method.high_outputs(h, b["image"].astype("float32") / 255.0))
        rows.append({"sigma": 0.0, "input": "clean",
                     **_pass(trainer, lambda b: clean(high, b), data, entry)})
    for sigma in sigmas:
        s = float(sigma)
        # (for the denoising stages this includes the PSNR of the noisy input itself)
        metrics = _pass(trainer, lambda b: no_den(high, b, s), data, entry)
        rows.append({"sigma": s, "input": "noisy", **metrics})
        for name, d in denoisers:
            rows.append({"sigma": s, "input": name,
                         **_pass(trainer, lambda b, d=d: with_den(d, high, b, s), data, entry)})
    return rows


def load_mse_denoiser(cfg) -> dict[str, Any]:
    """The denoiser variables of the run named by a joint run's ``model.init_from``."""
    _, variables, _ = load_stage(cfg.model.init_from, "model.init_from", ("denoise", "joint"),
                                 cfg, DENOISER_KEYS)
    return {k: v for k, v in variables.items() if k != "frozen"}


def image_rows(trainer, folder: str, sigmas, denoisers) -> list[dict[str, Any]]:
    """PSNR / SSIM of whole images of ``folder`` (tiled inference) per sigma, for the
    noisy input and each ``(name, denoiser variables)`` of ``denoisers``."""
    from adverse_vision.data.folders import ImageFolderSource  # pylint: disable=import-outside-toplevel
    method, cfg = trainer.method, trainer.cfg
    margin = denoiser_crop(cfg.dnhl.denoiser_form)
    apply = xla_options.jit(lambda d, x: method.denoiser.apply(d, x, train=False))
    source = ImageFolderSource(folder)
    border = int(cfg.dnhl.psnr_border)
    rows = []
    for sigma in sigmas:
        scores: dict[str, list] = {"noisy": []}
        scores.update({name: [] for name, _ in denoisers})
        for i in range(len(source)):
            clean = source[i]["image"].astype(np.float32) / 255.0
            rng = np.random.default_rng([IMAGE_NOISE_SEED, i])
            noisy = clean + float(sigma) / 255.0 * rng.standard_normal(clean.shape).astype(np.float32)
            if cfg.dnhl.clip_noisy:
                noisy = np.clip(noisy, 0.0, 1.0)
            ref = clean.astype(np.float64) * 255.0
            outs = {"noisy": noisy}
            for name, d in denoisers:
                outs[name] = tiled_apply(lambda t, d=d: np.asarray(apply(d, t)), noisy,
                                         tile=int(cfg.dnhl.tile), stride=int(cfg.dnhl.tile_stride),
                                         margin=margin)
            for name, out in outs.items():
                out = np.clip(out, 0.0, 1.0).astype(np.float64) * 255.0
                scores[name].append((min(psnr(ref, out, 255.0, border=border), MAX_PSNR),
                                     ssim(ref, out, 255.0)))
        for name, values in scores.items():
            arr = np.asarray(values)
            rows.append({"sigma": float(sigma), "input": name, "psnr": float(arr[:, 0].mean()),
                         "ssim": float(arr[:, 1].mean()), "images": len(source)})
    return rows


_COLUMNS = (("top1", "top-1 %"), ("top5", "top-5 %"), ("miou", "mIoU %"),
            ("pixel_acc", "pixel acc %"), ("psnr", "PSNR dB"), ("ssim", "SSIM"))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`report` rows (absent values shown as '-')."""
    cols = [(k, name) for k, name in _COLUMNS if any(k in r for r in rows)]
    head = f"{'sigma':>6}  {'input':<18}" + "".join(f"{name:>12}" for _, name in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[k]:12.2f}" if k in r and k != "ssim" else
                        (f"{r[k]:12.4f}" if k in r else f"{'-':>12}") for k, _ in cols)
        lines.append(f"{r['sigma']:6.0f}  {r['input']:<18}{cells}")
    return "\n".join(lines)


def report(trainer, variables, data, entry: str, images: Optional[str] = None):
    """(rows, table text) of a DN-HL run on the evaluation ``entry``; see the module
    docstring."""
    sigmas = tuple(trainer.cfg.dnhl.eval_sigmas)
    denoisers = _denoisers(trainer, variables)
    rows = _rows(trainer, variables, data, entry, sigmas, denoisers)
    text = format_table(rows)
    if images:
        extra = image_rows(trainer, images, sigmas, denoisers)
        text += f"\n\nwhole images of {images} (tiled inference):\n" + format_table(extra)
        rows = rows + [dict(r, images_folder=images) for r in extra]
    return rows, text
