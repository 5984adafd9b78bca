"""Evaluation: FVD/KVD with the Kinetics-400 I3D, image metrics, and an FVD callback."""

from keras_hpdm.metrics.features import extract_video_features, pretrained_i3d
from keras_hpdm.metrics.frechet_video_distance import (
    FrechetVideoDistance,
    frechet_distance,
    frechet_distance_from_stats,
)
from keras_hpdm.metrics.functions import evaluate_videos, fvd, kvd
from keras_hpdm.metrics.fvd_callback import FVDCallback
from keras_hpdm.metrics.i3d import I3D, kinetics400_labels, preprocess_videos
from keras_hpdm.metrics.i3d_weights import load_i3d_checkpoint, locate_i3d_checkpoint
from keras_hpdm.metrics.image_metrics import fid, image_kid_proxy, inception_score, psnr, ssim
from keras_hpdm.metrics.kernel_video_distance import KernelVideoDistance, kernel_distance

__all__ = [
    "FVDCallback",
    "FrechetVideoDistance",
    "I3D",
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
    "locate_i3d_checkpoint",
    "preprocess_videos",
    "pretrained_i3d",
    "psnr",
    "ssim",
]
