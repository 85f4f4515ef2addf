"""groundup: build, pretrain from scratch and fine-tune deep-learning models on PyTorch."""

__version__ = "0.1.0"
