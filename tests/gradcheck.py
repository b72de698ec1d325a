"""Numerical gradients by central differences, and the relative error used to compare them.

In the style of the CS231n `gradient_check.py`: perturb one entry at a time by +-h and read the
change of a scalar. For an op with array output, the scalar is sum(out * dout) for a fixed random
dout, whose gradient with respect to an input is exactly what the op's backward returns.
"""

import numpy as np


def model_central_difference(loss, model, p, i, h=1e-5):
    """(loss() at p[i] + h - loss() at p[i] - h) / 2h for one entry of a model parameter `p`,
    which is restored (and the model's caches cleared) afterwards."""
    old = p[i]
    p[i] = old + h
    lp = loss()
    p[i] = old - h
    lm = loss()
    p[i] = old
    model.clear_caches()
    return (lp - lm) / (2 * h)


def rel_error(a, b, tiny=1e-300):
    """max |a - b| / max(|a| + |b|): one relative error for a whole array, robust to zero entries."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a) + np.abs(b))), tiny))


def numerical_gradient(f, x, h=1e-5):
    """Central-difference gradient of a scalar function f() with respect to the array x.

    f must read x (it is perturbed in place and restored after each entry).
    Returns an array of x's shape.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
        it.iternext()
    return grad


def numerical_gradient_array(f, x, dout, h=1e-5):
    """Gradient of sum(f() * dout) with respect to x, for f returning an array."""
    return numerical_gradient(lambda: float(np.sum(f() * dout)), x, h)


def check_layer_gradients(forward, backward, arrays, rng, tol=1e-7, **kwargs):
    """Compare backward's gradients with numerical ones for every array argument of forward.

    forward(*arrays, **kwargs) -> (out, cache); backward(dout, cache) -> one gradient per array
    (a tuple, or a bare array for a single input). Entries of `arrays` that are None are skipped.
    Returns the list of relative errors; asserts each is below tol.
    """
    out, cache = forward(*arrays, **kwargs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    errors = []
    for arr, grad in zip(arrays, grads):
        if arr is None:
            assert grad is None
            continue
        num = numerical_gradient_array(lambda: forward(*arrays, **kwargs)[0], arr, dout)
        assert grad.shape == arr.shape
        errors.append(rel_error(grad, num))
    assert max(errors) < tol, errors
    return errors
