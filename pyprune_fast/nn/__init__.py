"""Module kinds the engine knows beyond plain torch: the pruned module variants (attention with fewer
heads than its width implies) and Swin's window attention as one op.

attention.py        PrunedMultiheadAttention (nn.MultiheadAttention whose head size is stored)
window_attention.py shifted_window_attention, one op whose head size comes from its weights (torch only)
swin.py             torchvision's Swin window attention subclasses that run it (imports torchvision)
"""
