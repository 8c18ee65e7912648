"""fuse: build one verified ensemble model out of saved Keras models."""

__version__ = "0.1.0"
