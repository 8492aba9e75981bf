"""The bottom layer: what training, export, serving and the lab share.

Every package may import core; core imports none of them (and never torch or transformers).
"""
