"""The whisper-tiny audio encoder MuseTalk uses for its audio tokens (openai-whisper `model.py` layout).

MuseTalk never decodes text: it takes five encoder depths per 20 ms frame. Two files hold the same network:
v1.5 reads the Hugging Face folder (`config.json` + `pytorch_model.bin`/`model.safetensors`, keys `model.encoder.*`),
the original v1.0 reads the openai `tiny.pt` (`{"dims", "model_state_dict"}`, fp16, keys `encoder.*`). Both key
layouts are mapped onto this one module; the decoder tensors in either file are skipped because nothing reads them.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError, load_strict, read_json, read_state_dict

N_MELS = 80
N_CTX = 1500  # encoder frames per 30 s input, 50 per second
WIDTH = 384
HEADS = 6
LAYERS = 4

WHISPER_TINY = ("whisper-tiny: the Hugging Face folder openai/whisper-tiny (config.json + pytorch_model.bin or "
                "model.safetensors) for MuseTalk v1.5, or the openai-format tiny.pt for v1.0")

# Hugging Face name fragments -> ours (= openai's); applied to keys below `model.encoder.`
_HF_RENAMES = (("embed_positions.weight", "positional_embedding"), ("layers.", "blocks."),
               ("self_attn_layer_norm", "attn_ln"), ("final_layer_norm", "mlp_ln"), ("self_attn.q_proj", "attn.query"),
               ("self_attn.k_proj", "attn.key"), ("self_attn.v_proj", "attn.value"), ("self_attn.out_proj", "attn.out"),
               ("fc1", "mlp.0"), ("fc2", "mlp.2"), ("layer_norm", "ln_post"))
_HF_CONFIG = {"d_model": WIDTH, "encoder_layers": LAYERS, "encoder_attention_heads": HEADS, "num_mel_bins": N_MELS,
              "max_source_positions": N_CTX}


class LayerNorm(nn.LayerNorm):
    # statistics in fp32 whatever the run dtype, as openai-whisper does: fp16 variance overflows on loud frames
    def forward(self, x):
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(WIDTH, WIDTH)
        self.key = nn.Linear(WIDTH, WIDTH, bias=False)
        self.value = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, HEADS, -1).transpose(1, 2) for proj in (self.query, self.key, self.value))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, WIDTH))


class ResidualAttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = SelfAttention()
        self.attn_ln = LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        self.mlp_ln = LayerNorm(WIDTH)

    def forward(self, x):
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, WIDTH, 3, padding=1)
        self.conv2 = nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
        # the sinusoid table is stored in both files (as a buffer or an Embedding), so it is loaded, not computed
        self.register_buffer("positional_embedding", torch.zeros(N_CTX, WIDTH))
        self.blocks = nn.ModuleList(ResidualAttentionBlock() for _ in range(LAYERS))
        self.ln_post = LayerNorm(WIDTH)

    def forward(self, mel, final_norm):
        """[B,80,3000] log-mel -> [B,1500,5,384]: the embeddings (conv, GELU, + positions) and each block's output.
        `final_norm=True` passes block 4 through ln_post (HF `hidden_states`, v1.5); False keeps it raw (v1.0)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positional_embedding.to(x.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        if final_norm:
            states[-1] = self.ln_post(x)
        return torch.stack(states, dim=2)


def load_whisper(path, expected, fix):
    """The encoder from the HF whisper-tiny folder (v1.5) or from the openai `tiny.pt` file (v1.0); CPU, fp32, eval."""
    expected = f"{expected}: {WHISPER_TINY}"
    if os.path.isdir(path):
        weights_path, state = _read_hf_folder(path, expected, fix)
    else:
        weights_path, state = path, _read_openai_file(path, expected, fix)
    return load_strict(WhisperEncoder(), {k: v.float() for k, v in state.items()}, weights_path, expected, fix)


def _read_hf_folder(folder, expected, fix):
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path, expected, fix)
    other = {k: config.get(k) for k, v in _HF_CONFIG.items() if config.get(k) != v}
    if config.get("model_type") != "whisper" or other:
        raise WeightsError(config_path, f"does not describe whisper-tiny (model_type {config.get('model_type')!r}, "
                                        f"differs in {other})", expected, fix)
    names = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(folder, n))]
    weights_path = os.path.join(folder, names[0] if names else "pytorch_model.bin")
    state = read_state_dict(weights_path, expected, fix)
    # WhisperForConditionalGeneration saves `model.encoder.*`, a bare WhisperModel `encoder.*`
    prefix = "model.encoder." if any(k.startswith("model.encoder.") for k in state) else "encoder."
    encoder = {}
    for key, value in state.items():
        if key.startswith(prefix):
            key = key[len(prefix):]
            for old, new in _HF_RENAMES:
                key = key.replace(old, new)
            encoder[key] = value
    return weights_path, encoder


def _read_openai_file(path, expected, fix):
    state = read_state_dict(path, expected, fix, unwrap=("model_state_dict",))
    if not any(k.startswith("encoder.") for k in state) and any(".encoder." in k for k in state):
        raise WeightsError(path, "is a Hugging Face whisper checkpoint, not the openai-format tiny.pt "
                                 "({'dims', 'model_state_dict'})", expected,
                           fix + "; for v1.5 select the whisper folder that holds this file with its config.json")
    return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
