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
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        (L, N, _), S, H, hd = query.shape, key.shape[0], self.num_heads, self.head_dim
        inner = H * hd
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q, b_k, b_v = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).reshape(L, N, H, hd).permute(1, 2, 0, 3)  # N, H, L, hd
        k = F.linear(key, w_k, b_k).reshape(S, N, H, hd).permute(1, 2, 0, 3)
        v = F.linear(value, w_v, b_v).reshape(S, N, H, hd).permute(1, 2, 0, 3)

        mask = None  # additive, broadcast to (N, H, L, S)
        if attn_mask is not None:
            m = attn_mask.reshape(N, H, L, S) if attn_mask.dim() == 3 else attn_mask
            mask = torch.zeros_like(m, dtype=q.dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(q.dtype)
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(N, 1, 1, S)
            pad = torch.zeros_like(pad, dtype=q.dtype).masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else pad.to(q.dtype)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / hd ** 0.5
            if is_causal and mask is None:
                scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        out = F.linear(out.permute(2, 0, 1, 3).reshape(L, N, inner), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
