"""torchvision's Swin window attention with pruned heads (imports torchvision; see window_attention.py).

`apply` turns a `ShiftedWindowAttention(V2)` whose heads were pruned into the subclass here (same
parameters, same state dict keys), whose forward takes the head size from `qkv.weight`; the graph
uses the same subclasses while it records a forward pass, so the attention is one recorded op.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from .window_attention import shifted_window_attention

__all__ = ["PrunedShiftedWindowAttention", "PrunedShiftedWindowAttentionV2", "PRUNED"]


class _HeadsFromWeights:
    def _attend(self, x: Tensor, logit_scale: Optional[Tensor]) -> Tensor:
        return shifted_window_attention(
            x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(), self.window_size, self.num_heads,
            self.shift_size, attention_dropout=self.attention_dropout, dropout=self.dropout, qkv_bias=self.qkv.bias,
            proj_bias=self.proj.bias, logit_scale=logit_scale, training=self.training)


class PrunedShiftedWindowAttention(_HeadsFromWeights, ShiftedWindowAttention):
    """ShiftedWindowAttention with `num_heads * head_dim` inner channels, head_dim from qkv.weight."""

    def forward(self, x: Tensor) -> Tensor:
        return self._attend(x, None)


class PrunedShiftedWindowAttentionV2(_HeadsFromWeights, ShiftedWindowAttentionV2):
    """ShiftedWindowAttentionV2 with `num_heads * head_dim` inner channels, head_dim from qkv.weight."""

    def forward(self, x: Tensor) -> Tensor:
        return self._attend(x, self.logit_scale)


# torchvision's class (or ours) -> ours
PRUNED = {cls: ours for ours, base in ((PrunedShiftedWindowAttention, ShiftedWindowAttention),
                                       (PrunedShiftedWindowAttentionV2, ShiftedWindowAttentionV2))
          for cls in (base, ours)}
