"""`copy_matching_weights`: a backbone started from a trained one with other conditioning."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone
from keras_hpdm.models.warm_start import copy_matching_weights

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)


def values(variables):
    return {v.path.split("/", 1)[1]: np.asarray(ops.convert_to_numpy(v.value))
            for v in variables}


def built(backbone):
    backbone.build()
    return backbone


def test_text_backbone_starts_from_a_class_backbone():
    """Every weight the two architectures share is copied (the denoiser then computes the
    same as the class model wherever the condition does not enter); the text layers keep
    their initial values; the class layers have nowhere to go."""
    keras.utils.set_random_seed(0)
    source = built(RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1, num_classes=4))
    keras.utils.set_random_seed(1)
    target = built(RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1, text_dim=16))
    before = values(target.weights)
    copied, kept = copy_matching_weights(target, source)

    after, trained = values(target.weights), values(source.weights)
    assert sorted(kept) == ["text_attention/queries", "text_pooling/bias",
                            "text_pooling/kernel", "text_to_latent/bias",
                            "text_to_latent/kernel"]
    assert len(copied) + len(kept) == len(target.weights)
    assert len(copied) == len(source.weights) - 2  # all but the two class embeddings
    for path in copied:
        np.testing.assert_array_equal(after[path], trained[path])
    for path in kept:
        np.testing.assert_array_equal(after[path], before[path])
    # The copy changed the network (seeds differ), so a no-op copy would fail above.
    assert any(not np.array_equal(before[p], trained[p]) for p in copied)


def test_a_unet_text_backbone_starts_from_a_unet_class_backbone():
    """Two UNets built in one process share every path but the conditioning layers' (the
    noise-level MLP's layers were auto-named by a process-wide count, so the second UNet's
    never matched the first's)."""
    keras.utils.set_random_seed(0)
    source = built(UNet3DBackbone.from_preset("tiny", pyramid=SPEC, channels=1,
                                              num_classes=4))
    target = built(UNet3DBackbone.from_preset("tiny", pyramid=SPEC, channels=1, text_dim=16))
    copied, kept = copy_matching_weights(target, source)
    assert sorted(kept) == ["text_attention/queries", "text_pooling/bias",
                            "text_pooling/kernel"]
    assert {"cond_mlp/hidden/kernel", "cond_mlp/out/kernel"} <= set(copied)


def test_changed_shapes_stay_and_other_architectures_are_refused():
    keras.utils.set_random_seed(0)
    source = built(RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1, num_classes=4))
    target = built(RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1, num_classes=7))
    copied, kept = copy_matching_weights(target, source)
    # Class tables of 5 and 8 rows (with the null class) do not match: they stay.
    assert sorted(kept) == ["class_embedding/embedding/embeddings",
                            "class_token/embedding/embeddings"]
    assert "initial_latents" in copied

    # The UNet shares the noise-level MLP's paths, but it is another network.
    unet = built(UNet3DBackbone.from_preset("tiny", pyramid=SPEC, channels=1, num_classes=4))
    with pytest.raises(ValueError, match="UNet3DBackbone.*RINBackbone"):
        copy_matching_weights(unet, source)
