"""Random-weight MuseTalk checkpoints in the official file formats, deterministic from (seed, model tag, tensor key).

    python tests/checkpoint_generator.py OUT_DIR [--size small|full] [--seed 20261124]

OUT_DIR becomes a models folder laid out like the official `models/` (plus `s3fd/`). The tensor lists come from
`tests/data/specs/*.json` (`[key, shape, dtype, init]` rows in file order); every value follows the documented rule

    rs = RandomState(crc32(f"{seed}:{tag}:{key}")); one draw, N = standard_normal or U = random_sample, in float64

so the files equal the ones the golden fixtures were produced with (tests/test_checkpoint_generator.py checks that).
"""
import argparse
import json
import math
import os
import sys
import zlib

import numpy as np
import torch

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "specs")
FIXTURE_SEED = 20261124

# init class -> value from the standard-normal draw N of the tensor
_SCALED_NORMAL = {
    "bias": lambda n: 0.02 * n,
    "embed": lambda n: 0.02 * n,
    "norm_b": lambda n: 0.1 * n,
    "bn_mean": lambda n: 0.1 * n,
    "norm_w": lambda n: 1.0 + 0.1 * n,
}


def load_spec(name):
    with open(os.path.join(SPECS, name + ".json")) as f:
        return json.load(f)


def _random_state(seed, tag, key):
    return np.random.RandomState(zlib.crc32(f"{seed}:{tag}:{key}".encode("utf-8")))


def _whisper_positions(length, channels):
    half = channels // 2
    inv = np.exp(-math.log(10000) / (half - 1) * np.arange(half, dtype=np.float64))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def draw(seed, tag, key, shape, init):
    """The float64 value of one tensor (tied tensors are resolved by the caller)."""
    if init == "zero":
        return np.zeros(shape)
    if init.startswith("const:"):
        return np.full(shape, float(init[len("const:"):]))
    if init == "sinusoid":
        return _whisper_positions(*shape)
    rs = _random_state(seed, tag, key)
    if init == "bn_var":
        return 0.5 + rs.random_sample(shape)
    n = rs.standard_normal(shape)
    if init in ("fan_in", "bisenet_calibrated"):
        return n / math.sqrt(int(np.prod(shape[1:])))
    return _SCALED_NORMAL[init](n)


def build_state_dict(spec, seed, tag, via_fp16=False):
    """(state_dict in file order, {key: float64 draw}) for one spec."""
    state, drawn = {}, {}
    for key, shape, dtype, init in spec["tensors"]:
        if init.startswith("tied:"):
            continue
        value = drawn[key] = draw(seed, tag, key, tuple(shape), init)
        if dtype == "int64":
            state[key] = torch.from_numpy(value.astype(np.int64)).reshape(shape)
            continue
        value = value.astype(np.float32)
        if via_fp16:
            value = value.astype(np.float16).astype(np.float32)
        state[key] = torch.from_numpy(np.ascontiguousarray(value)).reshape(shape)
    for key, _, _, init in spec["tensors"]:
        if init.startswith("tied:"):
            state[key] = state[init[len("tied:"):]]
    return {row[0]: state[row[0]] for row in spec["tensors"]}, drawn


def calibrate_bisenet(state, drawn, seed):
    """Spread the random classifier over several classes so that the blend masks are not empty (documented rule)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from musetalk.networks.bisenet import BiSeNet

    net = BiSeNet().double().eval()
    net.load_state_dict(state)  # float32 values, float64 arithmetic
    image = torch.from_numpy(_random_state(seed, "bisenet", "calibration_image").random_sample((1, 3, 16, 16)))
    image = torch.nn.functional.interpolate(image, size=(512, 512), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        mu = net.classifier_input((image - mean) / std).mean(dim=(0, 2, 3))
    w = torch.from_numpy(drawn["conv_out.conv_out.weight"][:, :, 0, 0])
    w = w - (w @ mu)[:, None] * mu[None, :] / (mu @ mu)
    boost = torch.ones(19, dtype=torch.float64)
    boost[10:15] = 1.6
    boost[1] = 2.0
    w = (w * boost[:, None]).numpy().astype(np.float32)
    state["conv_out.conv_out.weight"] = torch.from_numpy(np.ascontiguousarray(w[:, :, None, None]))
    return state


def _save(state, root, relpath):
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)


def _write_json(obj, root, relpath):
    with open(os.path.join(root, relpath), "w") as f:
        json.dump(obj, f, indent=2)


def write_unets(root, size, seed):
    spec = load_spec("unet_" + size)
    for tag, folder, name in [("unet_v1", "musetalk", "pytorch_model.bin"), ("unet_v15", "musetalkV15", "unet.pth")]:
        _save(build_state_dict(spec, seed, tag)[0], root, f"{folder}/{name}")
        _write_json(spec["config"], root, f"{folder}/musetalk.json")


def write_vae(root, size, seed):
    spec = load_spec("vae_" + size)
    _save(build_state_dict(spec, seed, "vae")[0], root, "sd-vae/diffusion_pytorch_model.bin")
    _write_json(spec["config"], root, "sd-vae/config.json")
    if not os.path.lexists(os.path.join(root, "sd-vae-ft-mse")):
        os.symlink("sd-vae", os.path.join(root, "sd-vae-ft-mse"))  # the v1.0 folder name


_LEGACY_TO_ORIGINAL = {"group_norm": "norm", "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def _original_prefixes(levels, layers):
    """diffusers module prefix -> CompVis (ldm) prefix, written out block by block for a KL autoencoder."""
    table = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for side in ("encoder", "decoder"):
        table.update({f"{side}.conv_in.": f"{side}.conv_in.", f"{side}.conv_out.": f"{side}.conv_out.",
                      f"{side}.conv_norm_out.": f"{side}.norm_out.",
                      f"{side}.mid_block.resnets.0.": f"{side}.mid.block_1.",
                      f"{side}.mid_block.resnets.1.": f"{side}.mid.block_2."})
        for legacy, original in _LEGACY_TO_ORIGINAL.items():
            table[f"{side}.mid_block.attentions.0.{legacy}."] = f"{side}.mid.attn_1.{original}."
    for level in range(levels):
        up = levels - 1 - level  # ldm numbers decoder levels from the highest resolution, diffusers from the lowest
        for j in range(layers):
            table[f"encoder.down_blocks.{level}.resnets.{j}."] = f"encoder.down.{level}.block.{j}."
        for j in range(layers + 1):
            table[f"decoder.up_blocks.{level}.resnets.{j}."] = f"decoder.up.{up}.block.{j}."
        if level < levels - 1:
            table[f"encoder.down_blocks.{level}.downsamplers.0."] = f"encoder.down.{level}.downsample."
            table[f"decoder.up_blocks.{level}.upsamplers.0."] = f"decoder.up.{up}.upsample."
    return table


def original_vae_layout(legacy_state, levels=4, layers=2):
    """The sd-vae folder's state dict (legacy attention names) under the CompVis names of a single-file VAE, as
    ComfyUI's models/vae files (vae-ft-mse-840000-ema-pruned.safetensors) hold it."""
    table = _original_prefixes(levels, layers)
    original = {}
    for key, value in legacy_state.items():
        prefix = max((p for p in table if key.startswith(p)), key=len)
        leaf = key[len(prefix):].replace("conv_shortcut.", "nin_shortcut.")
        if ".mid_block.attentions.0." in prefix and value.ndim == 2:
            value = value[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        original[table[prefix] + leaf] = value.contiguous()
    assert len(original) == len(legacy_state)
    return original


def write_single_file_vae(path, size="full", seed=FIXTURE_SEED):
    """The generator's sd-vae weights as one original-layout .safetensors file at `path` (the form both
    LoadMuseTalkModels' `vae` option and ComfyUI's own Load VAE read from models/vae; ComfyUI only builds the
    full-size network, ~320 MiB in fp32). Written whole under a temporary name, so an interrupted run leaves none."""
    from safetensors.torch import save_file

    spec = load_spec("vae_" + size)
    config = spec["config"]
    state = original_vae_layout(build_state_dict(spec, seed, "vae")[0], len(config["block_out_channels"]),
                                config["layers_per_block"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path + ".part")
    os.replace(path + ".part", path)
    return path


def write_whisper(root, seed):
    spec = load_spec("whisper_hf")
    state, _ = build_state_dict(spec, seed, "whisper", via_fp16=True)
    _save(state, root, "whisper/pytorch_model.bin")
    _write_json(spec["config"], root, "whisper/config.json")
    _write_json(spec["preprocessor_config"], root, "whisper/preprocessor_config.json")
    openai = load_spec("whisper_openai")
    openai_state = {key: state[hf_key].to(torch.float16).clone() for key, _, _, hf_key in openai["tensors"]}
    _save({"dims": openai["dims"], "model_state_dict": openai_state}, root, "whisper/tiny.pt")


def write_face_parsing(root, seed):
    _save(build_state_dict(load_spec("resnet18"), seed, "resnet18")[0], root, "face-parse-bisent/resnet18-5c106cde.pth")
    state, drawn = build_state_dict(load_spec("bisenet"), seed, "bisenet")
    _save(calibrate_bisenet(state, drawn, seed), root, "face-parse-bisent/79999_iter.pth")


def write_s3fd(root, seed):
    _save(build_state_dict(load_spec("s3fd"), seed, "s3fd")[0], root, "s3fd/s3fd-619a316812.pth")


def write_dwpose(root, seed):
    _save({"state_dict": build_state_dict(load_spec("dwpose"), seed, "dwpose")[0]}, root, "dwpose/dw-ll_ucoco_384.pth")


WRITERS = {
    "unet": lambda root, size, seed: write_unets(root, size, seed),
    "vae": lambda root, size, seed: write_vae(root, size, seed),
    "whisper": lambda root, size, seed: write_whisper(root, seed),
    "faceparse": lambda root, size, seed: write_face_parsing(root, seed),
    "s3fd": lambda root, size, seed: write_s3fd(root, seed),
    "dwpose": lambda root, size, seed: write_dwpose(root, seed),
}


def generate(root, size="small", seed=FIXTURE_SEED, only=tuple(WRITERS)):
    """Write the checkpoints of `only` under the models folder `root`; returns root."""
    os.makedirs(root, exist_ok=True)
    for name in only:
        WRITERS[name](root, size, seed)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--seed", type=int, default=FIXTURE_SEED)
    parser.add_argument("--only", default=",".join(WRITERS))
    args = parser.parse_args()
    generate(args.out, args.size, args.seed, args.only.split(","))


if __name__ == "__main__":
    main()
