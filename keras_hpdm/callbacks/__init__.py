"""Training callbacks: crash-safe checkpoints with resume state, periodic sample videos."""

from keras_hpdm.callbacks.sample_videos import SampleVideos
from keras_hpdm.callbacks.training_checkpoint import TrainingCheckpoint

__all__ = ["SampleVideos", "TrainingCheckpoint"]
