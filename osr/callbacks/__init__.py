"""Lightning callbacks osr adds to a run (conf/callbacks/): threshold calibration after fit,
per-epoch curves, what resuming needs, and the run config in checkpoints."""

from osr.callbacks.history import EpochHistory
from osr.callbacks.resume import CarryCSVRows, RNGState
from osr.callbacks.run_config import StoreRunConfig
from osr.callbacks.threshold_calibration import ThresholdCalibration

__all__ = ["CarryCSVRows", "EpochHistory", "RNGState", "StoreRunConfig", "ThresholdCalibration"]
