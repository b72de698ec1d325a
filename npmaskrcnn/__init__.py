"""npmaskrcnn: Mask R-CNN written from scratch in NumPy, every layer with a hand-written backward."""

__version__ = "0.1.0"
