"""Model stage, a reference read top to bottom: RoPE (rope.py), the transformer block
(block.py), the causal decision (decision.py), Mixture-of-Depths routing (mod.py), the paper's random-routing control
(random_routing.py), the LM
(model.py), KV-cached decoding (decode.py), the hot spots' interface and plain-PyTorch
reference (ops.py), and the builder that picks their kernels for a device (build.py, the only
module here that asks modexp/kernels/); also the decode's routed fraction against capacity
(routing_check.py). `modexp sample`, which reads run folders, is in the runs stage (runs/sample.py).

Imports nothing eagerly: torch loads only with the module that needs it.
"""
