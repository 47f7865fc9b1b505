"""How variable inputs meet fixed shapes: choosing bucket sizes from real lengths (choose.py),
compiling one static-shape module per bucket (trace.py), and padding, dispatching and cutting
back at run time, with dynamic batch (dispatch.py); or packing several sequences into each
compiled row (packing.py: the algorithm; packed.py: the module)."""
from .choose import BucketChoice, Buckets, choose_buckets
from .dispatch import BucketedModule, Padding
from .packed import PackedModule, Packing
from .trace import trace_buckets

__all__ = ["BucketChoice", "BucketedModule", "Buckets", "PackedModule", "Packing", "Padding", "choose_buckets",
           "trace_buckets"]
