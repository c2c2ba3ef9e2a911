"""Model stage: the transformer (model.py), Mixture-of-Depths routing (mod.py), KV-cached
decoding (decode.py), the decode's routed fraction against capacity (routing_check.py) and
`modexp sample` (sample.py).

Imports nothing eagerly: torch loads only with the module that needs it.
"""
