"""XLA compiler options for the project's programs, and :func:`jit` that applies them.

On CPU, XLA hands individual convolutions, dots and reductions to the YNNPACK library
by default (``xla_cpu_experimental_ynn_fusion_type``). For the convolutions of these
networks, and above all for their kernel gradients, XLA's own convolution is the faster
one on a 2-core x86 CPU: the kernel gradient of a 3x3 64 -> 64 convolution at 80x80,
batch 8, took 0.087 s through the library against 0.025 s without it; of a 3x3
160 -> 256 one at 46x46, batch 64, 1.33 s against 0.35 s; of a 1x1 256 -> 64 one at
46x46, batch 64, 0.41 s against 0.079 s. TogetherNet-s's whole train step (320 px, batch
4) ran 1.19x and its 640 px inference 1.06x as fast without it (both programs compiled
in one process, timed alternately). So the programs built here keep the library for
individual dots and reductions and leave convolutions to XLA. The choice is for the CPU
only; on other backends, with a jaxlib that does not know the option, or where
``XLA_FLAGS`` already sets it (the user's choice wins), no options are passed.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["YNN_FUSION_FLAG", "YNN_FUSION_TYPES", "compiler_options", "jit"]

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
#: The YNNPACK fusions kept on CPU: the default set less individual convolutions.
YNN_FUSION_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE")


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler takes ``options`` (one tiny compile per
    process)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # pylint: disable=broad-except  # an unknown option or enum value
        return False
    return True


def compiler_options() -> dict[str, Any]:
    """The options for a program compiled for the default backend: on CPU, YNNPACK for
    dots and reductions only (see the module docstring); elsewhere none."""
    if jax.default_backend() != "cpu" or YNN_FUSION_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    options = ((YNN_FUSION_FLAG, ",".join(YNN_FUSION_TYPES)),)
    return dict(options) if _accepted(options) else {}


def jit(fn: Callable, **kwargs) -> Any:
    """``jax.jit(fn, **kwargs)`` compiled with :func:`compiler_options`."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
