"""nn.MultiheadAttention with fewer heads than its embedding size implies.

`nn.MultiheadAttention` derives its head size from `embed_dim // num_heads`, so once whole heads are
pruned (fewer rows in `in_proj_weight`, fewer columns in `out_proj.weight`) it can no longer run.
`apply` turns such a module into this subclass (same parameters, same state dict keys), whose
forward uses the stored `head_dim` instead. `load_pruned` does the same when it rebuilds a model.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PrunedMultiheadAttention"]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Self- or cross-attention with `num_heads * head_dim` inner channels (packed q/k/v projection)."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        if self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        L, N, S, H, hd = query.shape[0], query.shape[1], key.shape[0], self.num_heads, self.head_dim
        inner = H * hd
        w = self.in_proj_weight.split(inner)
        b: list[Optional[Tensor]] = [None, None, None]
        if self.in_proj_bias is not None:
            b = [t for t in self.in_proj_bias.split(inner)]
        q = F.linear(query, w[0], b[0]).reshape(L, N, H, hd).permute(1, 2, 0, 3)  # N, H, L, hd
        k = F.linear(key, w[1], b[1]).reshape(S, N, H, hd).permute(1, 2, 0, 3)
        v = F.linear(value, w[2], b[2]).reshape(S, N, H, hd).permute(1, 2, 0, 3)

        mask: Optional[Tensor] = None  # additive, broadcast to (N, H, L, S)
        if attn_mask is not None:
            mask = _additive(attn_mask.reshape(N, H, L, S) if attn_mask.dim() == 3 else attn_mask, q.dtype)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask.reshape(N, 1, 1, S), q.dtype)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0

        weights: Optional[Tensor] = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / hd ** 0.5
            if is_causal and mask is None:
                scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            if mask is not None:
                scores = scores + mask
            attn = F.dropout(scores.softmax(-1), dropout, self.training)
            out = attn @ v
            attn = attn.mean(1) if average_attn_weights else attn
            weights = attn.squeeze(0) if unbatched else attn
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        out = F.linear(out.permute(2, 0, 1, 3).reshape(L, N, inner), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An attention mask as numbers added to the scores: a bool mask's True (masked out) becomes -inf."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
