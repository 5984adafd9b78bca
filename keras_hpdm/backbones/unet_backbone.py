"""3D UNet backbone with deep context fusion and adaptive computation."""

import keras
from keras import ops

from keras_hpdm.backbones.hpdm_backbone import HPDMBackbone, fold_levels, unfold_levels
from keras_hpdm.backbones.unet_presets import unet_presets
from keras_hpdm.checks import check_int, check_number
from keras_hpdm.layers.downsample3d import Downsample3D
from keras_hpdm.layers.factorized_attention import FactorizedAttention
from keras_hpdm.layers.unet_res_block import UNetResBlock
from keras_hpdm.layers.upsample3d import Upsample3D


def _check_sequence(name, value, allow_empty=False):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or (
            not allow_empty and not len(value)):
        raise ValueError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}sequence "
                         f"of integers, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_hpdm")
class UNet3DBackbone(HPDMBackbone):
    """A video UNet over a patch pyramid: (2+1)D residual blocks, factorised space/time
    attention, deep context fusion before every stage, adaptive computation over stages.

    The "blocks" of `levels_per_block` are the encoder stages, the middle and the decoder
    stages (`2 * len(channel_multipliers) + 1`). A level that skips a block skips its
    residual blocks and attention; down/up-sampling always runs so every level keeps a
    consistent shape. Skip connections are additive (channels stay fixed within a stage),
    so skipped stages need no channel bookkeeping.

    Args:
        pyramid: `keras_hpdm.PyramidSpec`.
        base_channels: channels of the first stage.
        channel_multipliers: per-stage channel multiples of `base_channels`.
        num_res_blocks: residual blocks per stage (and in the middle).
        attention_stages: stage indices with factorised attention (the middle always has it).
        num_heads: attention heads.
        groups: GroupNorm groups (must divide every stage's channels).
        downsample_time: halve time too when going down (only while frames stay even).
        dropout: residual-block dropout.
        levels_per_block, channels, num_classes, text_dim, cond_dim, fusion_mode, use_coords,
            detach_context, coarse_prior: as in `RINBackbone` (`"shallow"` fusion fuses the
            input convolution's output of every level, before the first stage).

    Example:
    ```python
    backbone = keras_hpdm.backbones.UNet3DBackbone.from_preset("tiny", pyramid=spec)
    ```

    References:
        - [Ho et al., Video Diffusion Models, 2022](https://arxiv.org/abs/2204.03458)
        - [Skorokhodov et al., HPDM, CVPR 2024](https://arxiv.org/abs/2406.07792), App. D.
    """

    presets = unet_presets

    def __init__(self, pyramid, base_channels=64, channel_multipliers=(1, 2, 2),
                 num_res_blocks=2, attention_stages=(2,), num_heads=4, groups=8,
                 downsample_time=True, dropout=0.0, levels_per_block="linear", channels=3,
                 num_classes=None, text_dim=None, cond_dim=256, fusion_mode="deep",
                 use_coords=True, detach_context=False, coarse_prior=False, **kwargs):
        num_stages = len(_check_sequence("channel_multipliers", channel_multipliers))
        super().__init__(pyramid=pyramid, num_blocks=2 * num_stages + 1,
                         levels_per_block=levels_per_block, channels=channels,
                         num_classes=num_classes, text_dim=text_dim, cond_dim=cond_dim,
                         fusion_mode=fusion_mode, use_coords=use_coords,
                         detach_context=detach_context, coarse_prior=coarse_prior,
                         **kwargs)
        self.base_channels = check_int("base_channels", base_channels, low=1)
        self.channel_multipliers = tuple(
            check_int(f"channel_multipliers[{i}]", m, low=1)
            for i, m in enumerate(channel_multipliers))
        self.num_res_blocks = check_int("num_res_blocks", num_res_blocks, low=0)
        self.attention_stages = tuple(
            check_int(f"attention_stages[{i}]", s, low=0, high=num_stages - 1)
            for i, s in enumerate(_check_sequence("attention_stages", attention_stages,
                                                  allow_empty=True)))
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.groups = check_int("groups", groups, low=1)
        self.downsample_time = bool(downsample_time)
        self.dropout = check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        widths = [self.base_channels * m for m in self.channel_multipliers]
        for width in widths:
            if width % self.groups or width % self.num_heads:
                raise ValueError(
                    f"Stage width {width} must be divisible by `groups` ({groups}) and "
                    f"`num_heads` ({num_heads})."
                )
        f, h, w = pyramid.patch_size
        factor = 2 ** (num_stages - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"The patch size {pyramid.patch_size} must be divisible by {factor} in height "
                f"and width for {num_stages} stages."
            )
        # Halve time while it stays even, stage by stage.
        self.time_down = []
        frames = f
        for _ in range(num_stages - 1):
            down = self.downsample_time and frames % 2 == 0 and frames > 1
            self.time_down.append(down)
            frames //= 2 if down else 1
        policy = self.dtype_policy
        # Named: auto-names count the process's Dense layers, so a second UNet built in one
        # process would have other weight paths (and a warm start would not match them).
        self.cond_mlp = keras.Sequential([
            keras.layers.Dense(self.cond_dim, activation="silu", dtype=policy, name="hidden"),
            keras.layers.Dense(self.cond_dim, dtype=policy, name="out"),
        ], name="cond_mlp")
        self.conv_in = keras.layers.Conv3D(widths[0], 3, padding="same", dtype=policy,
                                           name="conv_in")
        self.fusions = self.make_fusions()

        def stage(width, name, attention):
            layers = [UNetResBlock(width, groups=self.groups, dropout=self.dropout,
                                   dtype=policy, name=f"{name}_res_{i}")
                      for i in range(self.num_res_blocks)]
            if attention:
                layers.append(FactorizedAttention(self.num_heads, dtype=policy,
                                                  name=f"{name}_attn"))
            return layers

        self.stage_layers = []  # encoder stages, middle, decoder stages (block order)
        for s, width in enumerate(widths):
            self.stage_layers.append(stage(width, f"down_{s}", s in self.attention_stages))
        self.stage_layers.append(stage(widths[-1], "mid", True))
        for s in reversed(range(num_stages)):
            self.stage_layers.append(stage(widths[s], f"up_{s}", s in self.attention_stages))
        self.downsamplers = [Downsample3D(widths[s + 1], downsample_time=self.time_down[s],
                                          dtype=policy, name=f"downsample_{s}")
                             for s in range(num_stages - 1)]
        self.upsamplers = [Upsample3D(widths[s - 1], upsample_time=self.time_down[s - 1],
                                      dtype=policy, name=f"upsample_{s}")
                           for s in range(1, num_stages)]
        self.norm_out = keras.layers.GroupNormalization(self.groups, epsilon=1e-6,
                                                        dtype="float32", name="norm_out")
        self.conv_out = keras.layers.Conv3D(self.channels, 3, padding="same", dtype=policy,
                                            name="conv_out")

    @staticmethod
    def _per_level(layer, h, num_levels):
        return unfold_levels(layer(fold_levels(h)), num_levels)

    def _forward(self, patches, state):
        num_levels = state.num_levels
        cond = self.cond_mlp(state.cond)

        def run(b, h):
            def step(fused, n):
                hb, c = fold_levels(fused), fold_levels(cond[:, :n])
                for layer in self.stage_layers[b]:
                    hb = layer(hb, c) if isinstance(layer, UNetResBlock) else layer(hb)
                return unfold_levels(hb, n)

            return self.run_block(b, state, step, h)

        h = self._per_level(self.conv_in, patches, num_levels)
        num_stages = len(self.channel_multipliers)
        skips = []
        for s in range(num_stages):
            h = run(s, h)
            skips.append(h)
            if s < num_stages - 1:
                h = self._per_level(self.downsamplers[s], h, num_levels)
        h = run(num_stages, h)
        for s in reversed(range(num_stages)):
            h = run(2 * num_stages - s, h + skips[s])
            if s > 0:
                h = self._per_level(self.upsamplers[s - 1], h, num_levels)
        h = fold_levels(h)
        h = ops.cast(self.norm_out(ops.cast(h, "float32")), self.compute_dtype)
        return unfold_levels(self.conv_out(ops.silu(h)), num_levels)

    def get_config(self):
        config = super().get_config()
        config.pop("num_blocks")  # derived from `channel_multipliers`
        return {
            **config,
            "base_channels": self.base_channels,
            "channel_multipliers": list(self.channel_multipliers),
            "num_res_blocks": self.num_res_blocks,
            "attention_stages": list(self.attention_stages),
            "num_heads": self.num_heads,
            "groups": self.groups,
            "downsample_time": self.downsample_time,
            "dropout": self.dropout,
        }
