"""An inference-only rewrite of the generator's gated layers: the same function in fewer FLOPs and copies.

`prepare_for_inference(generator)` returns a copy in which

- every gated deconvolution (nearest x2 upsampling, then a 3x3 gated conv) becomes one 2x2 convolution at
  the low resolution that computes the four output phases at once (sub-pixel form): the same sums over
  the same inputs, with 16 instead of 36 multiply-adds per low-resolution pixel and no upsampled copy;
- every gated convolution gates in place (no temporary for `sigmoid(gate)` or the product), and drops
  the kernel taps that can only read zero padding (dilation at least the map's size).

The arithmetic is the same up to float rounding (the folded weights add kernel taps before multiplying):
outputs differ from the reference layers by ~1e-7. The detection fast path runs the rewritten copy;
training and the straightforward reference loop keep the readable layers of `layers.py`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i3ad.models.layers import Activation, GatedConv2d, GatedDeconv2d

# After nearest x2 upsampling, output row 2i + a of a 3x3 conv (rows dy = -1, 0, 1) reads low-resolution
# rows i - 1, i, i (a = 0) or i, i, i + 1 (a = 1). FOLD[a] sums the 3 kernel rows into the 2 rows of a
# 2x2 kernel that reads low-resolution rows (i - 1, i) for a = 0 and (i, i + 1) for a = 1.
FOLD = (
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
    torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
)
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def gate_in_place(output: Tensor, activation: Activation | None) -> Tensor:
    """`activation(features) * sigmoid(gate)` for a conv output holding [features, gate] along dim 1.

    Writes into `output`'s gate half and into the fresh activation result, so it must only see a
    temporary (a conv output) and never run under autograd.
    """
    features, gate = output.chunk(2, dim=1)
    features = activation(features) if activation is not None else features.clone()
    return features.mul_(gate.sigmoid_())


def fold_upsampling(weight: Tensor) -> Tensor:
    """Fold nearest x2 upsampling into a 3x3 conv's weights: (C_out, C_in, 3, 3) -> (4, C_out, C_in, 2, 2).

    One 2x2 kernel per output phase (a, b) in `PHASES` order, applied at the low resolution with padding 1.
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"fold_upsampling needs 3x3 kernels, got {tuple(weight.shape)}")
    fold = [f.to(weight) for f in FOLD]
    return torch.stack([torch.einsum("ry,oiyx,cx->oirc", fold[a], weight, fold[b]) for a, b in PHASES])


class InplaceGatedConv2d(nn.Module):
    """`GatedConv2d` for inference: the same convolution, gated in place, without taps that only read padding.

    A stride-1 conv with dilation d >= the map's height reads zero padding through every kernel row but
    the centre one (all its other rows are >= d pixels away), so only the centre row is kept; the same for
    columns. The generator's dilation-16 convs on a 16 x 16 map (64-pixel input) become 1 x 1 convs.
    """

    def __init__(self, layer: GatedConv2d) -> None:
        super().__init__()
        self.conv = layer.conv
        self.activation = layer.activation
        self._pruned: dict[tuple[bool, bool], Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        dilation = conv.dilation[0]
        rows, columns = (dilation > 1 and conv.stride == (1, 1) and dilation >= size for size in x.shape[-2:])
        if not (rows or columns):
            return gate_in_place(conv(x), self.activation)
        key = (rows, columns)
        if key not in self._pruned:
            k = conv.kernel_size[0] // 2
            weight = conv.weight[:, :, k : k + 1] if rows else conv.weight
            self._pruned[key] = (weight[..., k : k + 1] if columns else weight).contiguous()
        padding = (0 if rows else conv.padding[0], 0 if columns else conv.padding[1])
        z = F.conv2d(x, self._pruned[key], conv.bias, padding=padding, dilation=conv.dilation)
        return gate_in_place(z, self.activation)


class SubpixelGatedDeconv2d(nn.Module):
    """`GatedDeconv2d` for inference: the four output phases from one 2x2 conv at the input resolution.

    Phase (a, b) of the output (pixels (2i + a, 2j + b)) is the (h + 1, w + 1) conv output shifted by
    (a, b). Output channels are ordered [features of the 4 phases, gates of the 4 phases], so the gating
    is one elementwise pass before the phases are interleaved into the output.
    """

    def __init__(self, layer: GatedDeconv2d) -> None:
        super().__init__()
        conv = layer.conv.conv
        self.activation = layer.conv.activation
        self.out_channels = conv.out_channels // 2
        phases = fold_upsampling(conv.weight.detach())  # (4, 2 * out, in, 2, 2)
        half = self.out_channels
        weight = torch.cat([phases[:, :half].flatten(0, 1), phases[:, half:].flatten(0, 1)])
        bias = conv.bias.detach()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([bias[:half].repeat(4), bias[half:].repeat(4)]), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        c = self.out_channels
        gated = gate_in_place(F.conv2d(x, self.weight, self.bias, padding=1), self.activation)
        gated = gated.view(b, 2, 2, c, h + 1, w + 1)
        out = x.new_empty(b, c, h, 2, w, 2)
        for row, column in PHASES:
            out[:, :, :, row, :, column] = gated[:, row, column, :, row : row + h, column : column + w]
        return out.view(b, c, 2 * h, 2 * w)


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of `module` with its gated layers rewritten for inference.

    See the module docstring; `module` itself is untouched. A module without gated layers is returned as it is.
    """
    if not any(isinstance(m, (GatedConv2d, GatedDeconv2d)) for m in module.modules()):
        return module
    prepared = copy.deepcopy(module).eval().requires_grad_(False)
    _replace_gated_layers(prepared)
    return prepared


def _replace_gated_layers(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        if isinstance(child, GatedDeconv2d):
            setattr(parent, name, SubpixelGatedDeconv2d(child))
        elif isinstance(child, GatedConv2d):
            setattr(parent, name, InplaceGatedConv2d(child))
        else:
            _replace_gated_layers(child)
