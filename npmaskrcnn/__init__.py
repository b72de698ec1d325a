"""npmaskrcnn: Mask R-CNN written from scratch in NumPy, every layer with a hand-written backward.

    from npmaskrcnn import MaskRCNN, Config, load_model, save_model

The names are imported lazily, so `import npmaskrcnn.layers` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Config", "MaskRCNN", "load_model", "save_model", "ShapesDataset"]

_WHERE = {"Config": "config", "MaskRCNN": "model", "load_model": "checkpoint",
          "save_model": "checkpoint", "ShapesDataset": "shapes"}


def __getattr__(name):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'npmaskrcnn' has no attribute {name!r}")
