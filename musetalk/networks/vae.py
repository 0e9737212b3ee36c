"""The sd-vae-ft-mse KL autoencoder, from any of the three forms users have on disk:

* the diffusers folder MuseTalk downloads (`sd-vae/` or the v1.0 name `sd-vae-ft-mse/`), whose 2022 `.bin` still uses
  the legacy mid-block attention names `query/key/value/proj_attn`;
* the same folder with current names or a `.safetensors` file;
* the single-file original-layout checkpoint ComfyUI users keep in `models/vae`
  (`vae-ft-mse-840000-ema-pruned.safetensors`): the same weights under CompVis names.

All three load strictly into one module whose names are the folder's current ones. The operation order is the one the
weights were published with, so latents and decoded images are bit-identical to it in fp32 (Winograd layers aside).
"""
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError, load_strict, read_json, read_state_dict
from . import winograd
from .unet import LATENT_SCALE, Attention, Downsample, ResnetBlock, Upsample, config_from_json, conv3x3

EPS = 1e-6
# keys a folder's config.json may carry that this module supports only at the given value
_VAE_FIXED = {"act_fn": "silu", "scaling_factor": LATENT_SCALE, "shift_factor": None, "latents_mean": None,
              "latents_std": None, "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}
# informative or read by pipelines, not by the network
_IGNORED = ("sample_size", "force_upcast")
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class VAEConfig:
    """The keys of the folder's `config.json` that shape the network (sd-vae-ft-mse's values by default)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32


class MidAttention(Attention):
    """Single-head self-attention over the pixels of a [B,C,H,W] map, GroupNorm first, plus the input."""

    def __init__(self, channels, groups):
        super().__init__(channels, heads=1, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)

    def forward(self, x):
        b, c, height, width = x.shape
        # normalised as [B,C,HW] and read as [B,HW,C] without a copy: the projections see the layout they always saw
        tokens = self.group_norm(x.view(b, c, height * width)).transpose(1, 2)
        return super().forward(tokens).transpose(1, 2).reshape(b, c, height, width) + x


class MidBlock(nn.Module):
    def __init__(self, channels, groups, make_conv):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, None, groups, EPS, make_conv=make_conv)
                                     for _ in range(2))
        self.attentions = nn.ModuleList([MidAttention(channels, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Level(nn.Module):
    """One resolution of the encoder (resnets, then a downsampler) or the decoder (resnets, then an upsampler)."""

    def __init__(self, in_channels, out_channels, count, groups, make_conv, downsample=False, upsample=False):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, None, groups,
                                                 EPS, make_conv=make_conv) for i in range(count))
        self.downsamplers = nn.ModuleList([Downsample(out_channels, padding=0)] if downsample else [])
        self.upsamplers = nn.ModuleList([Upsample(out_channels, make_conv)] if upsample else [])

    def forward(self, x):
        for layer in (*self.resnets, *self.downsamplers, *self.upsamplers):
            x = layer(x)
        return x


class Encoder(nn.Module):
    def __init__(self, config, make_conv):
        super().__init__()
        c, widths = config, config.block_out_channels
        self.conv_in = make_conv(c.in_channels, widths[0])
        self.down_blocks = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], c.layers_per_block, c.norm_num_groups, make_conv,
                  downsample=i < len(widths) - 1) for i in range(len(widths)))
        self.mid_block = MidBlock(widths[-1], c.norm_num_groups, make_conv)
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, widths[-1], eps=EPS)
        self.conv_out = make_conv(widths[-1], 2 * c.latent_channels)

    def forward(self, x):
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = level(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, config, make_conv):
        super().__init__()
        c, widths = config, config.block_out_channels[::-1]
        self.conv_in = make_conv(c.latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0], c.norm_num_groups, make_conv)
        self.up_blocks = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], c.layers_per_block + 1, c.norm_num_groups, make_conv,
                  upsample=i < len(widths) - 1) for i in range(len(widths)))
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, widths[-1], eps=EPS)
        self.conv_out = make_conv(widths[-1], c.out_channels)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            x = level(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """`encode` gives the posterior mean of the latents (unscaled), `decode` the images in [-1,1] (unclamped).

    3x3 convolutions with both widths of at least `winograd.MIN_CHANNELS` are `WinogradConv2d` layers (F(4x4, 3x3)
    for CPU float32 inputs; the same parameters and names as `nn.Conv2d`)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config

        def make_conv(in_channels, out_channels):
            if min(in_channels, out_channels) >= winograd.MIN_CHANNELS:
                return winograd.WinogradConv2d(in_channels, out_channels, 3, padding=1)
            return conv3x3(in_channels, out_channels)

        self.encoder = Encoder(config, make_conv)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config, make_conv)

    def encode(self, images):
        """images [B,in_channels,H,W] in [-1,1] -> posterior mean [B,latent_channels,H/8,W/8] (for 4 levels)."""
        _check(images, self.config.in_channels, "VAE images")
        moments = self.quant_conv(self.encoder(images))
        return moments[:, :self.config.latent_channels]  # the mean; the log-variance half goes unused

    def decode(self, latents):
        """latents [B,latent_channels,h,w] (unscaled) -> images [B,out_channels,8h,8w], about [-1,1]."""
        _check(latents, self.config.latent_channels, "VAE latents")
        return self.decoder(self.post_quant_conv(latents))


def _check(x, channels, what):
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} must be [B,{channels},H,W], got {tuple(x.shape)}")


def load_vae(path, expected, fix):
    """`path` is a diffusers folder or a single-file checkpoint; returns a CPU fp32 AutoencoderKL in eval mode."""
    if os.path.isdir(path):
        weights = next((os.path.join(path, n) for n in _WEIGHT_NAMES if os.path.isfile(os.path.join(path, n))),
                       os.path.join(path, _WEIGHT_NAMES[-1]))
        config = _folder_config(os.path.join(path, "config.json"), expected, fix)
        state = _modern_attention_names(read_state_dict(weights, expected, fix))
    else:
        weights = path
        state = read_state_dict(weights, expected, fix, unwrap=("state_dict",))
        if any(k.startswith("encoder.down.") for k in state):
            state = from_original_layout(state)
        config = _config_from_shapes(state)
        if config.latent_channels != VAEConfig.latent_channels:
            raise WeightsError(path, f"is a {config.latent_channels}-channel autoencoder (an SD3/Flux-style VAE)",
                               expected, "use the SD 1.x vae-ft-mse-840000-ema-pruned file, or the sd-vae folder")
    with torch.device("meta"):  # skip random initialisation; the file provides every tensor
        vae = AutoencoderKL(config)
    return load_strict(vae, state, weights, expected, fix, assign=True)


def _folder_config(path, expected, fix):
    raw = read_json(path, expected, fix)
    if not isinstance(raw, dict) or raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise WeightsError(path, "is not a KL autoencoder config (_class_name AutoencoderKL)", expected, fix)
    levels = len(raw.get("block_out_channels", VAEConfig.block_out_channels))
    fixed = {**_VAE_FIXED, "down_block_types": ["DownEncoderBlock2D"] * levels,
             "up_block_types": ["UpDecoderBlock2D"] * levels}
    return config_from_json(VAEConfig, raw, path, expected, fix, fixed, ignored=_IGNORED)


def _config_from_shapes(state):
    """A single file carries no config: read the widths from the weights (sd-vae-ft-mse gives VAEConfig())."""
    widths = []
    while f"encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight" in state:
        widths.append(state[f"encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight"].shape[0])
    layers = sum(1 for k in state if k.startswith("encoder.down_blocks.0.resnets.") and k.endswith(".conv1.weight"))
    if not widths or "post_quant_conv.weight" not in state:
        return VAEConfig()  # not a KL autoencoder: the strict load names what is missing
    return VAEConfig(block_out_channels=tuple(widths), layers_per_block=layers,
                     latent_channels=state["post_quant_conv.weight"].shape[0])


def _modern_attention_names(state):
    def rename(key):
        head, _, leaf = key.rpartition(".")
        module, _, name = head.rpartition(".")
        if ".attentions." in module and name in _LEGACY_ATTENTION:
            return f"{module}.{_LEGACY_ATTENTION[name]}.{leaf}"
        return key

    return {rename(k): v for k, v in state.items()}


_ORIGINAL_RULES = [
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"^encoder\.down\.(\d)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    # the original decoder counts its levels from the bottom, the folder layout from the top
    (r"^decoder\.up\.(\d)\.block\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.resnets."),
    (r"^decoder\.up\.(\d)\.upsample\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
]


def from_original_layout(state):
    """CompVis/ldm key names (as in ComfyUI's models/vae files) to the folder's names; drops training-only entries."""
    converted = {}
    for key, value in state.items():
        if not key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            continue  # loss.*, model_ema.* and similar training leftovers
        for pattern, replacement in _ORIGINAL_RULES:
            key = re.sub(pattern, replacement, key)
        if ".mid_block.attentions.0.to_" in key and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 convolutions there became linear layers
        converted[key] = value
    return converted
