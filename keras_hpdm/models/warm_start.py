"""Starting a backbone from a trained one with other conditioning (e.g. text from class).

A backbone's conditioning enters through a few small layers (the class embeddings, the text
projections); everything else (tokenizer, fusions, blocks, the noise-level MLP) has the same
shapes whatever the condition. So a text-conditional model can start from a trained
class-conditional one of the same architecture: it keeps what the trained network knows
about drawing and moving, and learns only how the new condition steers it.
"""

import numpy as np
from keras import ops


def _relative_path(variable, backbone):
    """A variable's path below its backbone (backbone names differ between instances)."""
    prefix = backbone.name + "/"
    path = variable.path
    return path[len(prefix):] if path.startswith(prefix) else path


def copy_matching_weights(target, source):
    """Copies every weight of backbone `source` into the weight of backbone `target` with
    the same path (below the backbone) and shape; the others keep their values.

    Args:
        target: the backbone to start (built).
        source: a trained backbone (built), e.g. `PatchDiffusionModel.backbone`.

    Returns:
        `(copied, kept)`: the relative paths of the target's weights that were copied and
        of those left as they were (new conditioning layers, changed shapes).

    Raises:
        ValueError: for backbones of different classes, or when no weight matches (not
            the same architecture).

    Example:
    ```python
    text_model = keras_hpdm.PatchDiffusionModel(text_backbone, text_encoder=encoder)
    copied, kept = copy_matching_weights(text_model.backbone, class_model.backbone)
    # kept: the text projections, which the copied network learns to listen to
    ```
    """
    if type(target) is not type(source):
        raise ValueError(f"`target` is a {type(target).__name__} and `source` a "
                         f"{type(source).__name__}: weights copy between backbones of one "
                         "class only.")
    sources = {_relative_path(w, source): w for w in source.weights}
    copied, kept = [], []
    for weight in target.weights:
        path = _relative_path(weight, target)
        match = sources.get(path)
        if match is None or tuple(match.shape) != tuple(weight.shape):
            kept.append(path)
            continue
        weight.assign(np.asarray(ops.convert_to_numpy(match.value)))
        copied.append(path)
    if not copied:
        raise ValueError(f"No weight of `source` ({source.name}) matches one of `target` "
                         f"({target.name}) by path and shape: not the same architecture.")
    return copied, kept
