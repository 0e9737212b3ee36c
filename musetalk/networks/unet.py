"""The MuseTalk UNet: a diffusers SD-1.x `UNet2DConditionModel` with 8 input channels and 384-d audio context.

MuseTalk is not a diffusion model: it runs one inpainting step at t=0 with the audio tokens as cross-attention
context. Both versions ship a plain state dict in diffusers naming plus the `musetalk.json` config.
"""
import math

import torch

from ..weights import WeightsError, load_strict, read_json, read_state_dict

LATENT_SCALE = 0.18215
AUDIO_TOKENS, AUDIO_DIM = 50, 384


def load_unet(config_path, weights_path, expected, fix):
    """Build the UNet from `musetalk.json` and fill it strictly from the weights file (CPU, fp32)."""
    from diffusers import UNet2DConditionModel

    config = read_json(config_path, expected, fix)
    if config.get("in_channels") != 8 or config.get("cross_attention_dim") != AUDIO_DIM:
        raise WeightsError(config_path, "is not a MuseTalk UNet config (needs in_channels 8, cross_attention_dim 384)",
                           expected, fix)
    state = read_state_dict(weights_path, expected, fix)
    with torch.device("meta"):  # skip random initialisation of ~850M parameters; the file provides every tensor
        unet = UNet2DConditionModel.from_config(config)
    return load_strict(unet, state, weights_path, expected, fix, assign=True)


def audio_positional_encoding(tokens=AUDIO_TOKENS, dim=AUDIO_DIM):
    """The additive sinusoid MuseTalk puts on the [B,50,384] audio tokens before the UNet (float32 [50,384])."""
    position = torch.arange(tokens, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(tokens, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding

