"""Run outputs: metrics as JSON lines and TensorBoard events, and a terminal progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Optional

import jax

from adverse_vision import storage


class MetricWriter:
    """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl`` and writes the
    same scalars as TensorBoard events, in ``workdir`` (a local folder or a bucket: see
    :mod:`adverse_vision.storage`). Only process 0 writes."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self._file = None
        self._tb = None
        if self.active:
            self._file = storage.GrowingFile(storage.join(workdir, "metrics.jsonl"))
            from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
            storage.register_tensorboard()
            self._tb = SummaryWriter(storage.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        values = {k: float(v) for k, v in scalars.items()}
        # Strict JSON: a value that is not a finite number (mAP of a split without
        # objects, say) is null, never NaN.
        record = {k: v if math.isfinite(v) else None for k, v in values.items()}
        self._file.write(json.dumps({"step": int(step), **record}, allow_nan=False) + "\n")
        self._file.flush()
        for name, value in record.items():
            if value is not None:  # TensorBoard has no "undefined": leave it out
                self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The records of a workdir's ``metrics.jsonl``. A last line without its newline is
    one being written (the run appends while others read): it is left out. Any other
    line that is not a JSON record is an error naming the file and the line."""
    path = storage.join(workdir, "metrics.jsonl")
    lines = storage.read_text(path).split("\n")
    records = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not a JSON record ({e})") from None
    return records


class Progress:
    """Steps/s, images/s and ETA: a tqdm bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, initial: int = 0, enabled: Optional[bool] = None,
                 images_per_step: int = 1):
        if enabled is None:
            enabled = sys.stderr.isatty() and jax.process_index() == 0
        self.images_per_step = images_per_step
        self._window = (time.time(), initial)
        self._last = initial
        self._bar = None
        if enabled:
            from tqdm import tqdm  # pylint: disable=import-outside-toplevel
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._last)
        self._last = step

    def rates(self) -> dict[str, float]:
        """Rates over the steps since the previous call (the first window includes
        compilation)."""
        t0, s0 = self._window
        now = time.time()
        steps_per_s = (self._last - s0) / max(now - t0, 1e-9)
        self._window = (now, self._last)
        return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * self.images_per_step}

    def set_postfix(self, **values: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**{k: f"{v:.4g}" for k, v in values.items()})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
