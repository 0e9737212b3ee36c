"""The MuseTalk UNet: the SD-1.x conditional UNet with 8 input channels and 384-d audio tokens as context.

MuseTalk is not a diffusion model: it runs one inpainting step at t=0 with the audio tokens as cross-attention
context. Both versions ship a plain state dict in diffusers naming plus the `musetalk.json` config, which this module
reads as it is. Every operation keeps the order of the network the checkpoints were trained and published with, so
the prediction is bit-identical to it in fp32. The resnet and resampling blocks serve the VAE too (`vae.py`).
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError, load_strict, read_json, read_state_dict

LATENT_SCALE = 0.18215
AUDIO_TOKENS, AUDIO_DIM = 50, 384

# Keys a saved config may carry that this module supports only at the given value (the SD-1.x defaults); a config
# that sets any of them otherwise describes another network.
_UNET_FIXED = {
    "act_fn": "silu", "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
    "dual_cross_attention": False, "use_linear_projection": False, "upcast_attention": False, "dropout": 0.0,
    "transformer_layers_per_block": 1, "num_attention_heads": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "class_embed_type": None, "num_class_embeds": None, "addition_embed_type": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_norm": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "projection_class_embeddings_input_dim": None,
    "addition_time_embed_dim": None, "reverse_transformer_layers_per_block": None,
}
_IGNORED = ("sample_size",)  # informative only: the network takes any size its down/up sampling can halve
DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has attention
UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def config_from_json(cls, config, path, expected, fix, fixed, ignored=_IGNORED):
    """Build the dataclass `cls` from a diffusers config dict; any key outside the supported subset is a WeightsError.

    Keys starting with `_` (class name, library version) are bookkeeping; `fixed` keys must keep their value."""
    names = {f.name for f in fields(cls)}
    values, unsupported = {}, []
    for key, value in config.items():
        if key.startswith("_") or key in ignored:
            continue
        if key in names:
            values[key] = tuple(value) if isinstance(value, list) else value
        elif key not in fixed or value != fixed[key]:
            unsupported.append(f"{key}={value!r}")
    if unsupported:
        raise WeightsError(path, f"describes a network outside the supported SD-1.x subset ({', '.join(unsupported)})",
                           expected, fix)
    return cls(**values)


@dataclass(frozen=True)
class UNetConfig:
    """The `musetalk.json` keys that shape the network (names and meanings as in that file)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_head_dim: int = 8  # despite the name, the NUMBER of heads (a quirk every SD-1.x config keeps)
    cross_attention_dim: int = 1280
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    center_input_sample: bool = False

    def problems(self):
        """What keeps this config from describing a network of this module (empty when it is fine)."""
        levels = len(self.block_out_channels)
        found = []
        if not isinstance(self.attention_head_dim, int):
            found.append(f"attention_head_dim {self.attention_head_dim!r} (one head count for every block)")
        elif any(c % self.attention_head_dim or c % self.norm_num_groups for c in self.block_out_channels):
            found.append(f"block_out_channels {list(self.block_out_channels)} must divide into "
                         f"{self.attention_head_dim} heads and {self.norm_num_groups} groups")
        if len(self.down_block_types) != levels or any(t not in DOWN_TYPES for t in self.down_block_types):
            found.append(f"down_block_types {list(self.down_block_types)} ({levels} of {sorted(DOWN_TYPES)})")
        if len(self.up_block_types) != levels or any(t not in UP_TYPES for t in self.up_block_types):
            found.append(f"up_block_types {list(self.up_block_types)} ({levels} of {sorted(UP_TYPES)})")
        if not isinstance(self.layers_per_block, int) or not isinstance(self.cross_attention_dim, int):
            found.append("layers_per_block and cross_attention_dim must be single numbers")
        return found


# --- building blocks (shared with the VAE) ------------------------------------------------------------------------

def conv3x3(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv (+ the time embedding), GroupNorm, SiLU, 3x3 conv, plus the (1x1-projected) input.

    `make_conv` builds the two 3x3 convolutions (the VAE picks Winograd ones for its wide layers)."""

    def __init__(self, in_channels, out_channels, time_channels, groups, eps, output_scale=1.0, make_conv=conv3x3):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = make_conv(in_channels, out_channels)
        self.time_emb_proj = nn.Linear(time_channels, out_channels) if time_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = make_conv(out_channels, out_channels)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale = output_scale

    def forward(self, x, time=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(time))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        h = x + h
        # dividing by 1 changes no bit, so the common case skips a pass over the activations
        return h if self.output_scale == 1 else h / self.output_scale


class Downsample(nn.Module):
    """A stride-2 3x3 conv. With padding 0 (the VAE encoder) the input is first padded by one pixel on the right and
    bottom only, so that the output grid starts at the first pixel."""

    def __init__(self, channels, padding):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)
        self.asymmetric = padding == 0

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels, make_conv=conv3x3):
        super().__init__()
        self.conv = make_conv(channels, channels)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- attention ----------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention of [B,L,C] tokens over `context` ([B,S,D] tokens; the tokens themselves when None)."""

    def __init__(self, dim, heads, context_dim=None, bias=False):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # a list, as in the checkpoints' `to_out.0` names

    def forward(self, x, context=None):
        b = x.shape[0]
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](h.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        # index 1 held the training dropout; an Identity keeps the checkpoints' `net.2` name for the output layer
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention over the audio tokens, and a GEGLU feed-forward (4x wide)."""

    def __init__(self, dim, heads, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm and a 1x1 conv into tokens, one transformer block, a 1x1 conv back, plus the input."""

    def __init__(self, channels, heads, context_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, height, width = x.shape
        h = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, height * width, c)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.reshape(b, height, width, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x


# --- the UNet -----------------------------------------------------------------------------------------------------

class DownBlock(nn.Module):
    """Resnets (each followed by a spatial transformer when `attention`), then an optional stride-2 downsampler."""

    def __init__(self, config, in_channels, out_channels, attention, downsample):
        super().__init__()
        c, groups, eps = config, config.norm_num_groups, config.norm_eps
        time = 4 * c.block_out_channels[0]
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, time, groups,
                                                 eps) for i in range(c.layers_per_block))
        self.attentions = nn.ModuleList(SpatialTransformer(out_channels, c.attention_head_dim, c.cross_attention_dim,
                                                           groups) for _ in self.resnets) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(out_channels, c.downsample_padding)] if downsample else [])

    def forward(self, x, time, context, skips):
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, time)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """Resnets over [x, skip] (each followed by a spatial transformer when `attention`), then an optional upsampler."""

    def __init__(self, config, skip_channels, in_channels, out_channels, attention, upsample):
        super().__init__()
        c, groups, eps = config, config.norm_num_groups, config.norm_eps
        time, count = 4 * c.block_out_channels[0], c.layers_per_block + 1
        # the last resnet takes the skip from the level above, the others the skips of this level
        self.resnets = nn.ModuleList(
            ResnetBlock((in_channels if i == 0 else out_channels) + (skip_channels if i == count - 1 else out_channels),
                        out_channels, time, groups, eps) for i in range(count))
        self.attentions = nn.ModuleList(SpatialTransformer(out_channels, c.attention_head_dim, c.cross_attention_dim,
                                                           groups) for _ in self.resnets) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x, time, context, skips):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), time)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        for upsampler in self.upsamplers:
            x = upsampler(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        c, channels = config, config.block_out_channels[-1]
        time = 4 * c.block_out_channels[0]
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, time, c.norm_num_groups, c.norm_eps,
                                                 c.mid_block_scale_factor) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialTransformer(channels, c.attention_head_dim, c.cross_attention_dim,
                                                            c.norm_num_groups)])

    def forward(self, x, time, context):
        return self.resnets[1](self.attentions[0](self.resnets[0](x, time), context), time)


class TimestepEmbedding(nn.Module):
    def __init__(self, channels, dim):
        super().__init__()
        self.linear_1 = nn.Linear(channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_sinusoid(timesteps, channels, flip_sin_to_cos, freq_shift, max_period=10000):
    """Float32 [N,channels] sinusoids of the timesteps; frequencies exp(-ln(max_period) * i / (channels/2 - shift))."""
    half = channels // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
    angles = timesteps[:, None].float() * torch.exp(exponent / (half - freq_shift))[None, :]
    parts = [torch.cos(angles), torch.sin(angles)] if flip_sin_to_cos else [torch.sin(angles), torch.cos(angles)]
    return F.pad(torch.cat(parts, dim=-1), (0, channels % 2))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        c, widths = config, config.block_out_channels
        self.config = c
        self.conv_in = conv3x3(c.in_channels, widths[0])
        self.time_embedding = TimestepEmbedding(widths[0], 4 * widths[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(c, widths[max(i - 1, 0)], widths[i], DOWN_TYPES[kind], downsample=i < len(widths) - 1)
            for i, kind in enumerate(c.down_block_types))
        self.mid_block = MidBlock(c)
        up_widths = widths[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock(c, up_widths[min(i + 1, len(widths) - 1)], up_widths[max(i - 1, 0)], up_widths[i],
                    UP_TYPES[kind], upsample=i < len(widths) - 1)
            for i, kind in enumerate(c.up_block_types))
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, widths[0], eps=c.norm_eps)
        self.conv_out = conv3x3(widths[0], c.out_channels)

    def forward(self, sample, timestep, context):
        """sample [B,in_channels,H,W] (H, W multiples of 2^(levels-1)), timestep (a number or 1 or B of them),
        context [B,S,cross_attention_dim] -> the prediction [B,out_channels,H,W] in the sample's dtype."""
        self._check_inputs(sample, context)
        c, batch = self.config, sample.shape[0]
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if len(timesteps) not in (1, batch):
            raise ValueError(f"give one timestep or one per sample ({batch}), got {len(timesteps)}")
        sinusoid = timestep_sinusoid(timesteps.expand(batch), c.block_out_channels[0], c.flip_sin_to_cos,
                                     c.freq_shift)
        time = self.time_embedding(sinusoid.to(sample.dtype))
        if c.center_input_sample:
            sample = 2 * sample - 1.0
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x = block(x, time, context, skips)
        x = self.mid_block(x, time, context)
        for block in self.up_blocks:
            x = block(x, time, context, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def _check_inputs(self, sample, context):
        c, factor = self.config, 2 ** (len(self.config.block_out_channels) - 1)
        if sample.ndim != 4 or sample.shape[1] != c.in_channels or sample.shape[2] % factor \
                or sample.shape[3] % factor:
            raise ValueError(f"UNet sample must be [B,{c.in_channels},H,W] with H and W multiples of {factor}, "
                             f"got {tuple(sample.shape)}")
        if context.ndim != 3 or context.shape[0] != sample.shape[0] or context.shape[2] != c.cross_attention_dim:
            raise ValueError(f"UNet context must be [{sample.shape[0]},tokens,{c.cross_attention_dim}] "
                             f"(one token set per sample), got {tuple(context.shape)}")


def load_unet(config_path, weights_path, expected, fix):
    """Build the UNet from `musetalk.json` and fill it strictly from the weights file (CPU, fp32)."""
    raw = read_json(config_path, expected, fix)
    if not isinstance(raw, dict) or raw.get("in_channels") != 8 or raw.get("cross_attention_dim") != AUDIO_DIM:
        raise WeightsError(config_path, "is not a MuseTalk UNet config (needs in_channels 8, cross_attention_dim 384)",
                           expected, fix)
    config = config_from_json(UNetConfig, raw, config_path, expected, fix, _UNET_FIXED)
    if config.problems():
        raise WeightsError(config_path, "describes a network outside the supported SD-1.x subset: "
                           + "; ".join(config.problems()), expected, fix)
    state = read_state_dict(weights_path, expected, fix)
    with torch.device("meta"):  # skip random initialisation of ~850M parameters; the file provides every tensor
        unet = UNet(config)
    return load_strict(unet, state, weights_path, expected, fix, assign=True)


def audio_positional_encoding(tokens=AUDIO_TOKENS, dim=AUDIO_DIM):
    """The additive sinusoid MuseTalk puts on the [B,50,384] audio tokens before the UNet (float32 [50,384])."""
    position = torch.arange(tokens, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(tokens, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding
