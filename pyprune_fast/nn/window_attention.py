"""Swin's shifted window attention as one op whose head size comes from its weights.

torchvision's `shifted_window_attention` derives the head size from the input width
(`C // num_heads`), so once whole heads are pruned (fewer rows in `qkv.weight`, fewer columns in
`proj.weight`) it can no longer run. `shifted_window_attention` here computes the same thing with
`head_dim = qkv_weight.shape[0] // (3 * num_heads)` and the residual width `C` left as it is. It
takes part in `__torch_function__`, so the graph records it as a single op with the parameters it
reads. The module classes that call it (`pyprune_fast.nn.swin`) subclass torchvision's and are only
imported when torchvision's Swin module is: this module needs torch alone.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

__all__ = ["shifted_window_attention", "window_attention_args"]


def shifted_window_attention(input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Tensor,
                             window_size: list[int], num_heads: int, shift_size: list[int],
                             attention_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: Optional[Tensor] = None,
                             proj_bias: Optional[Tensor] = None, logit_scale: Optional[Tensor] = None,
                             training: bool = True) -> Tensor:
    """torchvision's `shifted_window_attention` (same arguments, same arithmetic) with the head size
    taken from `qkv_weight` (rows: q, k, v, each `num_heads * head_dim`) instead of the input width.

    input (B, H, W, C); qkv_weight (3 * num_heads * head_dim, C); proj_weight (C, num_heads * head_dim);
    relative_position_bias and logit_scale broadcast against the (windows, num_heads, N, N) scores.
    Returns (B, H, W, C).
    """
    if not torch.jit.is_scripting():  # TorchScript compiles only the arithmetic below
        tensors = _given(input, qkv_weight, proj_weight, relative_position_bias, qkv_bias, proj_bias, logit_scale)
        if has_torch_function(tensors):
            return handle_torch_function(
                shifted_window_attention, tensors, input, qkv_weight, proj_weight, relative_position_bias,
                window_size, num_heads, shift_size, attention_dropout=attention_dropout, dropout=dropout,
                qkv_bias=qkv_bias, proj_bias=proj_bias, logit_scale=logit_scale, training=training)
    B, H, W, C = input.shape
    (wh, ww), inner = window_size, qkv_weight.shape[0] // 3
    head_dim = inner // num_heads
    x = F.pad(input, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
    _, pad_h, pad_w, _ = x.shape
    shift = [0 if wh >= pad_h else shift_size[0], 0 if ww >= pad_w else shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))

    windows, n = (pad_h // wh) * (pad_w // ww), wh * ww
    x = x.view(B, pad_h // wh, wh, pad_w // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B * windows, n, C)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        qkv_bias[inner: 2 * inner].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(B * windows, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:  # cosine attention (Swin V2)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _shift_mask(x, pad_h, pad_w, window_size, shift).unsqueeze(1).unsqueeze(0)
        attn = (attn.view(B, windows, num_heads, n, n) + mask).view(-1, num_heads, n, n)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)

    x = attn.matmul(v).transpose(1, 2).reshape(B * windows, n, inner)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    x = x.view(B, pad_h // wh, pad_w // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, pad_h, pad_w, C)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


def _given(*tensors: Optional[Tensor]) -> tuple[Tensor, ...]:
    """The tensors that are not None."""
    return tuple(t for t in tensors if t is not None)


def _shift_mask(x: Tensor, pad_h: int, pad_w: int, window_size: list[int], shift: list[int]) -> Tensor:
    """(windows, N, N): 0 between tokens of the same region of a shifted window, -100 across regions."""
    (wh, ww), (sh, sw) = window_size, shift
    regions = x.new_zeros((pad_h, pad_w))
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            regions[h[0]: h[1], w[0]: w[1]] = count
            count += 1
    regions = regions.view(pad_h // wh, wh, pad_w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


_SIGNATURE = inspect.signature(shifted_window_attention)


def window_attention_args(args: tuple, kwargs: dict) -> dict:
    """The arguments of a shifted_window_attention call, by name, defaults included."""
    bound = _SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments
