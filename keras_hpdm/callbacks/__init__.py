"""Training callbacks: crash-safe checkpoints with resume state, periodic sample videos,
FVD/KVD of samples, an exact step count."""

from keras_hpdm.callbacks.fvd_callback import FVDCallback
from keras_hpdm.callbacks.sample_videos import SampleVideos
from keras_hpdm.callbacks.stop_at_step import StopAtStep
from keras_hpdm.callbacks.training_checkpoint import (
    TrainingCheckpoint,
    load_training_checkpoint,
    read_training_state,
)

__all__ = ["FVDCallback", "SampleVideos", "StopAtStep", "TrainingCheckpoint",
           "load_training_checkpoint", "read_training_state"]
