"""How a model's classes meet a dataset's: which predicted label is which ground-truth label.

A model numbers its classes 1..K in the order of `model.class_names`; a dataset numbers its own
1..K' in the order of `dataset.class_names` (for a COCO JSON: sorted category ids). They agree for
a model trained on that dataset. They do not for a model imported from torchvision, whose 90
labels are COCO's category ids 1..90 (ten of them unused, named "N/A"), evaluated on a COCO JSON,
whose 80 categories the loader numbers 1..80: "person" is label 1 of both, "car" is the model's 3
and the dataset's 3, but "traffic light" is the model's 10 and the dataset's 10 only by luck of
order, and "backpack" the model's 27 and the dataset's 25. So labels are matched by class name
whenever the names allow it, and only by position when the two sets of names are different but
equally many (a model whose classes were named otherwise than the data's, as before).

Naming:
    mapping   {model label: dataset label}; a model label missing from it has no class in the
              dataset, and its detections are dropped before evaluation
    how       "same" (same names, same order), "by name" or "by position"
"""

import numpy as np


def label_mapping(model_names, dataset_names):
    """Which dataset label each model label is. Returns (mapping, how).

    - same names in the same order: the identity, "same"
    - every dataset class name is the name of exactly one model class: by name (the model may have
      more classes, e.g. torchvision's 90 COCO ids against a JSON's 80 categories, or a subset)
    - otherwise, as many classes: by position (label k is label k), "by position"
    Raises ValueError naming the dataset classes the model has no class of (or two classes of).
    """
    model_names, dataset_names = [str(n) for n in model_names], [str(n) for n in dataset_names]
    if model_names == dataset_names:
        return {k: k for k in range(1, len(model_names) + 1)}, "same"
    labels_of = {}
    for label, name in enumerate(model_names, start=1):
        labels_of.setdefault(name, []).append(label)
    missing = [n for n in dataset_names if n not in labels_of]
    twice = [n for n in dataset_names if len(labels_of.get(n, ())) > 1]
    if not missing and not twice:
        return {labels_of[n][0]: d for d, n in enumerate(dataset_names, start=1)}, "by name"
    if len(model_names) == len(dataset_names):
        return {k: k for k in range(1, len(model_names) + 1)}, "by position"
    problems = ([f"no model class named {missing[:10]}{' ...' if len(missing) > 10 else ''}"]
                if missing else []) + ([f"two model classes named {twice[:10]}"] if twice else [])
    raise ValueError(f"the dataset's {len(dataset_names)} classes do not match the model's "
                     f"{len(model_names)} ({'; '.join(problems)}): expected the same number of "
                     f"classes, or every dataset class name among the model's")


def relabel(predictions, mapping):
    """Predictions with dataset labels: each label mapped, detections of unmapped labels dropped.

    - predictions: list of dicts "boxes" (D, 4), "labels" (D,), "scores" (D,), optionally "masks"
      (D, H, W) (and any other per-detection arrays of length D)
    - mapping: {model label: dataset label}
    Returns new dicts; the inputs are not modified.
    """
    table = np.zeros(max(mapping, default=0) + 1, dtype=np.int64)
    for model_label, dataset_label in mapping.items():
        table[model_label] = dataset_label
    out = []
    for pred in predictions:
        labels = np.asarray(pred["labels"], dtype=np.int64)
        inside = labels < len(table)
        new = np.where(inside, table[np.where(inside, labels, 0)], 0)
        keep = new > 0
        d = len(labels)
        item = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == d else v)
                for k, v in pred.items()}
        item["labels"] = new[keep]
        out.append(item)
    return out


def describe_mapping(mapping, how, model_names, dataset_names):
    """One line for the CLI: how the classes were matched, and how many model classes are unused."""
    unused = len(model_names) - len(mapping)
    pairs = ", ".join(f"{model_names[m - 1]} -> {dataset_names[d - 1]}"
                      for m, d in list(sorted(mapping.items()))[:5])
    return (f"model classes matched to the dataset's {how}: {len(mapping)} classes ({pairs}"
            f"{', ...' if len(mapping) > 5 else ''})"
            + (f"; the model's {unused} other class{'es have' if unused != 1 else ' has'} no "
               f"ground truth here: their detections are dropped" if unused else ""))
