"""The torchvision commands: `import-torchvision` and `export-torchvision` (`cmd_<name>(args)`).

As `commands.py`: arguments checked first, a user error raises `checks.UsageError`, heavy modules
(numpy, torch) imported inside the commands only. torch is needed by these two commands alone;
the checkpoint `import-torchvision` writes loads without it (`checkpoint.load_model`).
"""

from npmaskrcnn import checks
from npmaskrcnn.checks import UsageError


def _need_torch(command):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(f"{command} needs torch (`pip install torch`); the model it writes or "
                         "reads is then used without it") from None


def cmd_import_torchvision(args):
    """A torchvision maskrcnn_resnet50_fpn .pth -> an ordinary checkpoint (no torch to load it)."""
    from .checkpoint import save_model
    from .torchvision_weights import import_torchvision

    checks.input_file(args.weights, "WEIGHTS")
    checks.output_file(args.out, "--out")
    if args.bn_eps is not None and not args.bn_eps >= 0:
        raise UsageError(f"--bn-eps: expected a number >= 0, got {args.bn_eps}")
    _need_torch("import-torchvision")
    try:
        model, eps = import_torchvision(args.weights, args.bn_eps)
    except (ValueError, RuntimeError, OSError, EOFError) as e:   # torch.load: RuntimeError, pickle
        raise UsageError(f"WEIGHTS: {args.weights!r}: {e}") from None
    save_model(model, args.out)
    print(f"{args.weights}: {model.num_params():,} numbers, {model.config.num_classes} classes, "
          f"BN eps {eps:g}{' (guessed; --bn-eps sets it)' if args.bn_eps is None else ''}; "
          f"written to {args.out}")
    return 0


def cmd_export_torchvision(args):
    """A checkpoint of torchvision's architecture -> a maskrcnn_resnet50_fpn state dict (.pth)."""
    from .torchvision_weights import to_torchvision, write_state_dict

    model = checks.load_model_arg(args.model, "MODEL.npz")
    model = getattr(model, "model", model)                   # the network inside an inference wrapper
    checks.output_file(args.out, "--out")
    try:
        state = to_torchvision(model)
    except ValueError as e:
        raise UsageError(f"MODEL.npz: {e}") from None
    _need_torch("export-torchvision")
    write_state_dict(state, args.out)
    cfg = model.config
    print(f"{len(state)} tensors written to {args.out}: torchvision's maskrcnn_resnet50_fpn with "
          f"num_classes={cfg.num_classes + 1} and BN eps {cfg.bn_eps:g} loads them (the exact "
          "construction: docs/torchvision.md)")
    return 0
