"""Class-label embedding with a null label for classifier-free guidance."""

import keras
from keras import ops

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class ClassEmbedding(keras.layers.Layer):
    """Embeds labels in `[0, num_classes)`; label `num_classes` (== `null_label`) is the
    learned "no condition" embedding used for condition dropout and guidance.

    Entries start as unit normals: the embedding is added to the unit-scale sinusoidal
    noise features (`SigmaEmbedding(..., condition=...)`), where it must weigh as much as
    the noise level does.

    Args:
        num_classes: number of real classes.
        dim: embedding width.

    Example:
    ```python
    emb = ClassEmbedding(10, 256)
    e = emb(labels)                 # (B,) -> (B, 256)
    u = emb(ops.full((B,), emb.null_label))
    ```
    """

    def __init__(self, num_classes, dim, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.dim = check_int("dim", dim, low=1)
        self.embedding = keras.layers.Embedding(
            num_classes + 1, self.dim, dtype=self.dtype_policy, name="embedding",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
        )

    @property
    def null_label(self):
        return self.num_classes

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, labels):
        return self.embedding(ops.cast(labels, "int32"))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim}
