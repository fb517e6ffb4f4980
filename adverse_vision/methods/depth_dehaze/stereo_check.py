r"""Dehazing runs scored on a REAL photograph fogged through its stereo depth.

  python -m adverse_vision.methods.depth_dehaze.stereo_check \
      --workdirs runs/sdg_noguide_0,runs/sdg_learned_0,runs/sdg_oracle_0 [--json out.json]

No synthetic scene can say whether depth guidance helps on real geometry. A rectified
stereo pair can: scikit-image ships Middlebury 2014's "Motorcycle" (left view and its
ground-truth disparity, :func:`adverse_vision.data.stereo_depth.motorcycle_depth`).
The photograph is resized by ``--scale`` (area averaging; the depth, a per-pixel
quantity, by its nearest sample), fogged with the scattering model through that depth
(:func:`adverse_vision.degrade.haze`, the normalisation the training haze uses) at
``--A`` and ``--beta``, and each workdir's dehazer runs on the foggy photograph. A run
with oracle guidance gets the photograph's true inverse depth, ``min(1, depth_near /
z)`` with ``z`` in metres, as its scenes did. The table gives PSNR / SSIM of the foggy
and of each dehazed photograph against the clear one, and the gains.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from adverse_vision import degrade
from adverse_vision import trainer as trainer_lib
from adverse_vision.data import stereo_depth
from adverse_vision.metrics.dehaze import dehaze_scores


def foggy_photograph(scale: float, A: float, beta: float):
    """``(clear, foggy, depth_m)`` of the motorcycle photograph at ``scale``: uint8
    (H, W, 3) images and the depth in metres (H, W)."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"--scale must be in (0, 1], got {scale}")
    left, depth_mm = stereo_depth.motorcycle_depth(normalize=False)
    h, w = left.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    clear = np.asarray(Image.fromarray(left).resize(size, Image.BOX))
    depth = np.asarray(Image.fromarray(depth_mm.astype(np.float32)).resize(size, Image.NEAREST))
    foggy = degrade.haze(clear.astype(np.float32) / 255.0, np.random.default_rng(0),
                         depth=depth, A=A, beta=beta)
    foggy = np.clip(np.round(np.asarray(foggy) * 255.0), 0, 255).astype(np.uint8)
    return clear, foggy, depth / 1000.0


def check(workdirs: Sequence[str], scale: float = 0.25, A: float = 0.8,
          beta: float = 0.1) -> list[dict[str, Any]]:
    """One row per workdir (plus the foggy input's scores in each)."""
    clear, foggy, depth_m = foggy_photograph(scale, A, beta)
    x = jnp.asarray(foggy[None].astype(np.float32) / 255.0)
    rows = []
    for workdir in workdirs:
        tr, variables, step = trainer_lib.restore_for_eval(workdir, "best")
        method = tr.method
        if method.name != "depth_dehaze" or method.stage != "dehaze":
            raise ValueError(f"{workdir}: not a dehazing run of depth_dehaze")
        variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
        oracle = None
        if method.guidance == "true":
            near = float(tr.cfg.sdg.depth_near)
            oracle = jnp.asarray(np.minimum(1.0, near / np.maximum(depth_m, 1e-6))[None, ..., None],
                                 jnp.float32)
        out = method.run(variables, x, oracle)["dehazed"]
        dehazed = np.asarray(jnp.round(out[0] * 255.0), np.uint8)
        scores = dehaze_scores(clear, dehazed, foggy, official_protocol=False)
        rows.append({"workdir": workdir, "guidance": method.guidance, "seed": int(tr.cfg.seed),
                     "step": int(step), **scores,
                     "psnr_gain": scores["psnr"] - scores["psnr_input"],
                     "ssim_gain": scores["ssim"] - scores["ssim_input"]})
    return rows


def table(rows: Sequence[dict[str, Any]], scale: float, A: float, beta: float) -> str:
    head = (f"motorcycle (Middlebury 2014) at scale {scale}, fogged with A {A}, beta {beta}\n"
            f"{'workdir':<32} {'guidance':<8} {'PSNR':>6} {'gain':>6} {'SSIM':>6} {'gain':>7}")
    lines = [head]
    if rows:
        lines.append(f"{'(foggy input)':<32} {'':<8} {rows[0]['psnr_input']:6.2f} {'':>6} "
                     f"{rows[0]['ssim_input']:6.3f}")
    for r in rows:
        lines.append(f"{r['workdir'][-32:]:<32} {r['guidance']:<8} {r['psnr']:6.2f} "
                     f"{r['psnr_gain']:+6.2f} {r['ssim']:6.3f} {r['ssim_gain']:+7.3f}")
    return "\n".join(lines)


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    from adverse_vision import cli  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    workdirs = [w for w in f.workdirs.split(",") if w]
    for w in workdirs:
        cli.check_path(w, "--workdirs", write=False)
    rows = check(workdirs, f.scale, f.A, f.beta)
    print(table(rows, f.scale, f.A, f.beta))
    if f.json:
        with open(f.json, "w", encoding="utf-8") as out:
            json.dump({"scale": f.scale, "A": f.A, "beta": f.beta, "rows": rows}, out, indent=1)
    return 0


if __name__ == "__main__":
    from absl import flags as _flags  # pylint: disable=ungrouped-imports
    from adverse_vision import cli as _cli
    _flags.DEFINE_string("workdirs", None, "Comma-separated dehazing workdirs.")
    _flags.DEFINE_float("scale", 0.25, "Resize factor of the 741x500 photograph.")
    _flags.DEFINE_float("A", 0.8, "Airlight of the fog.")
    _flags.DEFINE_float("beta", 0.1, "Scattering coefficient of the fog.")
    _flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
    _flags.mark_flags_as_required(["workdirs"])
    _cli.run(main)
