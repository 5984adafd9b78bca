"""Evaluation: FVD/KVD with the Kinetics-400 I3D, image metrics, and the Moving MNIST judge
(a digit reader: class accuracy and persistence of generated digits). The FVD callback
lives in `keras_hpdm.callbacks`."""

from keras_hpdm.metrics.caption_sensitivity import caption_sensitivity
from keras_hpdm.metrics.digit_reader import DigitReader, centre_digits
from keras_hpdm.metrics.digit_scores import digit_video_scores, read_videos
from keras_hpdm.metrics.features import extract_video_features, pretrained_i3d
from keras_hpdm.metrics.frechet_video_distance import (
    FrechetVideoDistance,
    frechet_distance,
    frechet_distance_from_stats,
)
from keras_hpdm.metrics.functions import evaluate_videos, fvd, kvd
from keras_hpdm.metrics.i3d import I3D, kinetics400_labels, preprocess_videos
from keras_hpdm.metrics.i3d_weights import load_i3d_checkpoint, locate_i3d_checkpoint
from keras_hpdm.metrics.image_metrics import fid, image_kid_proxy, inception_score, psnr, ssim
from keras_hpdm.metrics.kernel_video_distance import KernelVideoDistance, kernel_distance
from keras_hpdm.metrics.motion import direction_accuracy, measured_directions
from keras_hpdm.metrics.moving_mnist_evaluation import (
    evaluate_moving_mnist,
    evaluate_moving_mnist_text,
    moving_mnist_fvd,
)

__all__ = [
    "DigitReader",
    "FrechetVideoDistance",
    "I3D",
    "caption_sensitivity",
    "centre_digits",
    "digit_video_scores",
    "direction_accuracy",
    "evaluate_moving_mnist",
    "evaluate_moving_mnist_text",
    "KernelVideoDistance",
    "evaluate_videos",
    "extract_video_features",
    "fid",
    "frechet_distance",
    "frechet_distance_from_stats",
    "fvd",
    "image_kid_proxy",
    "inception_score",
    "kernel_distance",
    "kinetics400_labels",
    "kvd",
    "load_i3d_checkpoint",
    "measured_directions",
    "locate_i3d_checkpoint",
    "moving_mnist_fvd",
    "preprocess_videos",
    "pretrained_i3d",
    "psnr",
    "read_videos",
    "ssim",
]


def __getattr__(name):
    # `keras_hpdm.metrics.FVDCallback`, its home before it joined the other callbacks:
    # resolved on use, so importing metrics never imports callbacks (no cycle).
    if name == "FVDCallback":
        from keras_hpdm.callbacks.fvd_callback import FVDCallback

        return FVDCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
