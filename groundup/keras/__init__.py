"""The Keras-style API: layers, Sequential, functional and subclassed models, compile/fit
facades over the one Trainer, and Keras' utilities.

It sits above `train/` (its models compile onto the one `Trainer`), so `models/` keeps only
plain `nn.Module`s that know no trainer.
"""
