"""DN-HL, a denoiser trained through a frozen classifier or segmenter: its method
(:mod:`.method`), the pieces its stages share (:mod:`.stages`) and the comparison
table of ``evaluate`` (:mod:`.comparison`)."""

from adverse_vision.methods.dnhl.method import DNHLEvaluator, DNHLMethod
from adverse_vision.methods.dnhl.stages import (
    DENOISER_KEYS,
    HIGH_KEYS,
    MAX_PSNR,
    STAGES,
    TASKS,
    add_noise,
    crop,
    eval_noise,
    load_stage,
    mse_255,
)

__all__ = ["DENOISER_KEYS", "DNHLEvaluator", "DNHLMethod", "HIGH_KEYS", "MAX_PSNR", "STAGES",
           "TASKS", "add_noise", "crop", "eval_noise", "load_stage", "mse_255"]
