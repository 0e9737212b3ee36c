"""Wide 3x3 convolutions on the CPU by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2016).

On a CPU the VAE already runs at ~75% of the machine's GEMM rate, so it only gets faster by doing less arithmetic.
F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 multiplications per input/output channel
pair instead of 144: the input tiles and the weights are transformed (B^T d B, G g G^T), multiplied channel-wise as
36 independent GEMMs, and transformed back (A^T m A). The transforms are memory-bound, so this wins only where the
GEMMs are wide: it gains for 512-channel layers and loses for 128 and 256 channels (figures in bench/README.md).
The rounding differs from a direct convolution by a few 1e-5 per layer, inside the parity tolerance.

`WinogradConv2d` is an `nn.Conv2d` (same parameters and state-dict keys) that the VAE builds for its 3x3 layers
where both widths reach MIN_CHANNELS; any call that is not CPU float32 (a GPU, half precision, autograd) takes the
normal convolution.
"""
import torch
import torch.nn.functional as F

#: both channel counts must reach this for the transforms to pay off (measured; see the module docstring); read when
#: a VAE is built
MIN_CHANNELS = 512
# The transformed input and product of one chunk take 36 floats per input tile and channel; chunks of whole
# images stay under this many bytes so that the temporaries do not outgrow the activations they replace.
CHUNK_BYTES = 64 * 2 ** 20

_B_T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_MATRICES = {}


def _transforms():
    """The 2-D transforms as matrices on flattened tiles: input [36,36], weight [36,9], output [16,36] (float32)."""
    if not _MATRICES:
        b_t, g, a_t = (torch.tensor(m, dtype=torch.float64) for m in (_B_T, _G, _A_T))
        # computed in float64 and rounded once, so each matrix entry is the float32 nearest the exact value
        _MATRICES.update(input=torch.kron(b_t, b_t).float(), weight=torch.kron(g, g).float(),
                         output=torch.kron(a_t, a_t).float())
    return _MATRICES


def winograd_conv3x3(x, weight, bias=None):
    """`F.conv2d(x, weight, bias, padding=1)` for float32 x [N,C,H,W] and weight [O,C,3,3], by F(4x4, 3x3)."""
    n, channels, height, width = x.shape
    out_channels = weight.shape[0]
    m = _transforms()
    u = (m["weight"] @ weight.reshape(out_channels * channels, 9).T).view(36, out_channels, channels)
    tiles_y, tiles_x = -(-height // 4), -(-width // 4)
    tiles = tiles_y * tiles_x
    # one padding serves the convolution's own 1-pixel border and rounds the size up to whole tiles
    padded = F.pad(x, (1, 4 * tiles_x + 1 - width, 1, 4 * tiles_y + 1 - height))
    out = torch.empty(n, out_channels, tiles_y, 4, tiles_x, 4, dtype=x.dtype)
    per_chunk = max(1, CHUNK_BYTES // (36 * channels * tiles * 4))
    for start in range(0, n, per_chunk):
        part = padded[start:start + per_chunk]
        count = len(part)
        d = part.unfold(2, 6, 4).unfold(3, 6, 4).permute(4, 5, 1, 0, 2, 3).reshape(36, -1)
        v = (m["input"] @ d).view(36, channels, count * tiles)
        product = torch.bmm(u, v).view(36, -1)
        y = (m["output"] @ product).view(4, 4, out_channels, count, tiles_y, tiles_x).permute(3, 2, 4, 0, 5, 1)
        target = out[start:start + count]
        if bias is None:
            target.copy_(y)
        else:
            torch.add(y, bias.view(1, -1, 1, 1, 1, 1), out=target)
    out = out.view(n, out_channels, 4 * tiles_y, 4 * tiles_x)
    if out.shape[2:] != (height, width):
        out = out[:, :, :height, :width].contiguous()
    return out


class WinogradConv2d(torch.nn.Conv2d):
    """An `nn.Conv2d` (3x3, stride 1, padding 1) that convolves CPU float32 inputs by F(4x4, 3x3)."""

    def _conv_forward(self, input, weight, bias):
        if input.device.type != "cpu" or input.dtype != torch.float32 or torch.is_grad_enabled():
            return super()._conv_forward(input, weight, bias)
        return winograd_conv3x3(input, weight, bias)
