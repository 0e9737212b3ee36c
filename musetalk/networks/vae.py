"""The sd-vae-ft-mse autoencoder (diffusers `AutoencoderKL`), from any of the three forms users have on disk:

* the diffusers folder MuseTalk downloads (`sd-vae/` or the v1.0 name `sd-vae-ft-mse/`), whose 2022 `.bin` still uses
  the legacy mid-block attention names `query/key/value/proj_attn`;
* the same folder with current names or a `.safetensors` file;
* the single-file original-layout checkpoint ComfyUI users keep in `models/vae`
  (`vae-ft-mse-840000-ema-pruned.safetensors`): the same weights under CompVis names.
"""
import os
import re

import torch

from ..weights import WeightsError, load_strict, read_json, read_state_dict
from .winograd import use_winograd

# sd-vae-ft-mse's config; a single-file checkpoint carries none, so its widths are read from the weights instead
SD_VAE_CONFIG = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 256,
}
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_vae(path, expected, fix):
    """`path` is a diffusers folder or a single-file checkpoint; returns a CPU fp32 AutoencoderKL in eval mode."""
    from diffusers import AutoencoderKL

    if os.path.isdir(path):
        weights = next((os.path.join(path, n) for n in _WEIGHT_NAMES if os.path.isfile(os.path.join(path, n))),
                       os.path.join(path, _WEIGHT_NAMES[-1]))
        config = read_json(os.path.join(path, "config.json"), expected, fix)
        state = _modern_attention_names(read_state_dict(weights, expected, fix))
    else:
        weights = path
        state = read_state_dict(weights, expected, fix, unwrap=("state_dict",))
        if any(k.startswith("encoder.down.") for k in state):
            state = from_original_layout(state)
        config = _config_from_shapes(state)
        if config["latent_channels"] != SD_VAE_CONFIG["latent_channels"]:
            raise WeightsError(path, f"is a {config['latent_channels']}-channel autoencoder (an SD3/Flux-style VAE)",
                               expected, "use the SD 1.x vae-ft-mse-840000-ema-pruned file, or the sd-vae folder")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    vae = load_strict(vae, state, weights, expected, fix, assign=True)
    use_winograd(vae)
    return vae


def _config_from_shapes(state):
    """A single file carries no config: read the widths from the weights (sd-vae-ft-mse gives SD_VAE_CONFIG)."""
    widths = []
    while f"encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight" in state:
        widths.append(state[f"encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight"].shape[0])
    layers = sum(1 for k in state if k.startswith("encoder.down_blocks.0.resnets.") and k.endswith(".conv1.weight"))
    if not widths or "post_quant_conv.weight" not in state:
        return SD_VAE_CONFIG  # not a KL autoencoder: the strict load names what is missing
    return {**SD_VAE_CONFIG, "block_out_channels": widths, "layers_per_block": layers,
            "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths),
            "latent_channels": state["post_quant_conv.weight"].shape[0]}


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
    # the original decoder counts its levels from the bottom, diffusers from the top
    (r"^decoder\.up\.(\d)\.block\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.resnets."),
    (r"^decoder\.up\.(\d)\.upsample\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
]


def from_original_layout(state):
    """CompVis/ldm key names (as in ComfyUI's models/vae files) to diffusers names; drops training-only entries."""
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
