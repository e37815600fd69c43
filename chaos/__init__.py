"""`hft-executor chaos`: the fault campaign (real processes, real kills) and its invariant checker."""
