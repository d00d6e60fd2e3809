"""What the engine knows about module types beyond plain torch, one home per kind.

widths.py           each module type's width attributes, how its tensors set them, the class it becomes
                    with fewer heads (read by surgery, serialization and the graph)
attention.py        PrunedMultiheadAttention (nn.MultiheadAttention whose head size is stored)
window_attention.py shifted_window_attention, one op whose head size comes from its weights (torch only)
swin.py             torchvision's Swin window attention subclasses that run it (imports torchvision)
rewritten.py        a module's own copy of a method with a size argument rewritten to -1 (apply, save_pruned)
caches.py           module attributes that cache a shape (ultralytics Detect's anchors), cleared while recording
"""
