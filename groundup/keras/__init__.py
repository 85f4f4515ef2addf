"""The Keras-style API: layers, Sequential and functional models, compile/fit facades.

It sits above `train/` (its models compile onto the one `Trainer`), so `models/` keeps only
plain `nn.Module`s that know no trainer.
"""
