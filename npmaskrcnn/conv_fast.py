"""Winograd convolution F(2x2, 3x3) (Lavin & Gray 2016): an optimisation of layers.conv2d.

This file is a faster formulation of one case of `layers.conv2d_forward` / `conv2d_backward`
(a 3x3 kernel with stride 1, any padding), which they call when `winograd_pays` says so. The
readable formulation is im2col + one matmul in layers.py; this one computes the same numbers
(tested equal to it: tests/test_conv_fast.py) with 2.25x fewer multiplications.

The idea, in one dimension: two outputs of a 3-tap filter g on four inputs d,
    y0 = d0 g0 + d1 g1 + d2 g2,   y1 = d1 g0 + d2 g1 + d3 g2,
take 6 multiplications directly but only 4 as
    y = A^T [(G g) * (B^T d)]      (* elementwise, 4 products)
with the constant matrices below. Nesting it over rows and columns gives F(2x2, 3x3): a 2x2
output tile from a 4x4 input tile in 16 products instead of 36,
    Y = A^T [ (G g G^T) * (B^T d B) ] A.
Summed over input channels, the 16 elementwise products of one tile become 16 independent matrix
products over channels, one per position (xi, nu) of the 4x4 transformed tile:
    M[k] = U[k] @ V[k],   U[k] (F, C) transformed filters,  V[k] (C, P) transformed input tiles,
and those go to BLAS (`np.matmul` of the stacks). The transforms are additions only (and halves,
exact in floating point, in G), done by the numba kernels below on channels-last copies of the
input and of dout, so that their innermost loops run along contiguous channels (vectorised); one
image at a time: the images are disjoint, so the loop could be split over threads (it stays
serial: see layers._im2col_kernel).

Backward is the adjoint of each stage, in reverse: dM = A dY A^T per tile, dU[k] = dM[k] V[k]^T,
dV[k] = U[k]^T dM[k], dw = G^T dU G, and dx = B dV B^T scatter-added into overlapping input tiles
(each tile only touches its own image: no race). Stored as V (16, P, C) and M (16, P, F), the
products are M[k] = V[k] U[k]^T, dU[k] = dM[k]^T V[k], dV[k] = dM[k] U[k].

Shape shorthand (as in layers.py):
    N images, C input channels, F filters, H x W input, OH x OW output (OH = H + 2*pad - 2),
    TH x TW output tiles (TH = ceil(OH / 2)), P = N * TH * TW tiles, k = 4*xi + nu in 0..15.
"""

import numpy as np
from numba import njit, prange

# The constant matrices of F(2, 3) (Lavin & Gray 2016, section 4.1)
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
GG = np.kron(G, G)  # (16, 9): the weight transform of a flattened 3x3 kernel

# Measured (float32, one thread, keep_freed_memory): 1.4-2.2x faster than im2col from 32 tiles
# up (e.g. (2, 128, 8, 8): 32 tiles, 1.36x), slower on 8-16 tiles ((2, 256, 4, 4): 0.66x), where
# the 16 products are too thin for BLAS; few channels leave the products too small as well.
MIN_CHANNELS = 16
MIN_TILES = 32
USE_WINOGRAD = True  # set False to run every conv through the readable im2col path


def winograd_pays(x_shape, w_shape, stride, pad):
    """True if conv2d of these shapes goes through the Winograd path (3x3, stride 1, big enough)."""
    n_img, c_in, h, wd = x_shape
    n_filt, _, kh, kw = w_shape
    if not USE_WINOGRAD or kh != 3 or kw != 3 or stride != 1:
        return False
    oh, ow = h + 2 * pad - 2, wd + 2 * pad - 2
    tiles = n_img * ((oh + 1) // 2) * ((ow + 1) // 2)
    return c_in >= MIN_CHANNELS and n_filt >= MIN_CHANNELS and tiles >= MIN_TILES and oh > 0 and ow > 0


def winograd_conv2d_forward(x, w, b, pad):
    """conv2d_forward(x, w, b, stride=1, pad) for a 3x3 w, by F(2x2, 3x3).

    Returns (out (N, F, OH, OW), cache for winograd_conv2d_backward)."""
    n_img, c_in, h, wd = x.shape
    n_filt = w.shape[0]
    oh, ow = h + 2 * pad - 2, wd + 2 * pad - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    # U = G w G^T for every (f, c): U[4*xi + nu] = sum_ij G[xi, i] G[nu, j] w[i, j], i.e. one
    # product with the Kronecker product of G with itself, (16, 9) @ (9, F*C)
    u = (GG.astype(w.dtype) @ w.reshape(n_filt * c_in, 9).T).reshape(16, n_filt, c_in)
    # channels last, zero-padded to whole tiles: the transforms then run along contiguous channels
    xp = np.zeros((n_img, 2 * th + 2, 2 * tw + 2, c_in), dtype=x.dtype)
    xp[:, pad:pad + h, pad:pad + wd, :] = x.transpose(0, 2, 3, 1)
    v = _winograd_input_kernel(xp, th, tw)  # (16, P, C)
    m = np.matmul(v, u.transpose(0, 2, 1))  # (16, P, F): one product over channels per tile position
    bias = b.astype(m.dtype) if b is not None else np.zeros(n_filt, dtype=m.dtype)
    out = _winograd_output_kernel(m, bias, n_img, th, tw)  # (N, 2*TH, 2*TW, F)
    out = np.ascontiguousarray(out[:, :oh, :ow, :].transpose(0, 3, 1, 2))
    return out, WinogradCache(x.shape, w, b is not None, pad, u, v)


class WinogradCache(tuple):
    """(x_shape, w, has_bias, pad, u, v) of winograd_conv2d_forward, told apart from im2col's cache."""
    __slots__ = ()

    def __new__(cls, *fields):
        return super().__new__(cls, fields)


def winograd_conv2d_backward(dout, cache, need_dx=True):
    """conv2d_backward for a cache of winograd_conv2d_forward: (dx or None, dw, db or None)."""
    x_shape, w, has_bias, pad, u, v = cache
    n_img, c_in, h, wd = x_shape
    n_filt = w.shape[0]
    oh, ow = dout.shape[2], dout.shape[3]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    dy = np.zeros((n_img, 2 * th, 2 * tw, n_filt), dtype=v.dtype)  # channels last, whole tiles
    dy[:, :oh, :ow, :] = dout.transpose(0, 2, 3, 1)
    dm = _winograd_output_adjoint_kernel(dy)  # (16, P, F)
    du = np.matmul(dm.transpose(0, 2, 1), v)  # (16, F, C)
    dw = (du.reshape(16, n_filt * c_in).T @ GG.astype(w.dtype)).reshape(w.shape)  # G^T dU G
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    if not need_dx:
        return None, dw, db
    dv = np.matmul(dm, u)  # (16, P, C)
    dxp = _winograd_input_adjoint_kernel(dv, n_img, th, tw)  # (N, 2*TH + 2, 2*TW + 2, C)
    dx = np.ascontiguousarray(dxp[:, pad:pad + h, pad:pad + wd, :].transpose(0, 3, 1, 2))
    return dx, dw, db


# The 1-D transforms, applied to four (or two) scalars; inlined into the kernels, whose innermost
# loop then runs over channels with every tile value in a register (the compiler vectorises it).
@njit(inline="always")
def _bt(d0, d1, d2, d3):
    """B^T d (input transform)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _b(v0, v1, v2, v3):
    """B v (adjoint of the input transform)."""
    return v0, v1 - v2 + v3, v2 + v1 - v0, -v3


@njit(inline="always")
def _at(m0, m1, m2, m3):
    """A^T m (output transform)."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always")
def _a(y0, y1):
    """A y (adjoint of the output transform)."""
    return y0, y0 + y1, y0 - y1, -y1


# Each kernel below applies its 2-D transform as two 1-D passes per tile, down the columns into a
# small scratch array and then along the rows, each pass a loop over channels that reads from one
# array and writes to another: so the compiler vectorises it (a single pass holding all 16 values
# of a tile was measured 2-3x slower: too many streams for its alias checks).


@njit(cache=True)
def _winograd_input_kernel(xp, th, tw):
    """V[4*i + j, (n*TH + ty)*TW + tx, c] = (B^T d B)[i, j], d = xp[n, 2*ty:2*ty + 4, 2*tx:2*tx + 4, c]
    (xp: the input, channels last, zero-padded)."""
    n_img, _, _, c_in = xp.shape
    v = np.empty((16, n_img * th * tw, c_in), dtype=xp.dtype)
    for n in prange(n_img):
        t = np.empty((16, c_in), dtype=xp.dtype)  # t[4*i + j] = (B^T d)[i, j]
        for ty in range(th):
            for tx in range(tw):
                p = (n * th + ty) * tw + tx
                y, x = 2 * ty, 2 * tx
                for j in range(4):  # B^T down column j of the tile
                    for c in range(c_in):
                        t[j, c], t[4 + j, c], t[8 + j, c], t[12 + j, c] = _bt(
                            xp[n, y, x + j, c], xp[n, y + 1, x + j, c], xp[n, y + 2, x + j, c], xp[n, y + 3, x + j, c])
                for i in range(4):  # then along row i
                    for c in range(c_in):
                        v[4 * i, p, c], v[4 * i + 1, p, c], v[4 * i + 2, p, c], v[4 * i + 3, p, c] = _bt(
                            t[4 * i, c], t[4 * i + 1, c], t[4 * i + 2, c], t[4 * i + 3, c])
    return v


@njit(cache=True)
def _winograd_output_kernel(m, bias, n_img, th, tw):
    """out[n, 2*ty + a, 2*tx + e, f] = bias[f] + (A^T M A)[a, e], M the 4x4 tile m[:, p, f]
    (channels last; the caller drops the outputs beyond OH, OW of an odd size)."""
    n_filt = m.shape[2]
    out = np.empty((n_img, 2 * th, 2 * tw, n_filt), dtype=m.dtype)
    for n in prange(n_img):
        s = np.empty((8, n_filt), dtype=m.dtype)  # s[4*a + j] = (A^T M)[a, j]
        for ty in range(th):
            for tx in range(tw):
                p = (n * th + ty) * tw + tx
                y, x = 2 * ty, 2 * tx
                for j in range(4):  # A^T down column j
                    for f in range(n_filt):
                        s[j, f], s[4 + j, f] = _at(m[j, p, f], m[4 + j, p, f], m[8 + j, p, f], m[12 + j, p, f])
                for a in range(2):  # then along row a
                    for f in range(n_filt):
                        y0, y1 = _at(s[4 * a, f], s[4 * a + 1, f], s[4 * a + 2, f], s[4 * a + 3, f])
                        out[n, y + a, x, f] = bias[f] + y0
                        out[n, y + a, x + 1, f] = bias[f] + y1
    return out


@njit(cache=True)
def _winograd_output_adjoint_kernel(dy):
    """Adjoint of the output transform: dm[:, p, f] = A dY A^T for the 2x2 tile
    dY = dy[n, 2*ty:2*ty + 2, 2*tx:2*tx + 2, f] (channels last, zero beyond OH, OW)."""
    n_img, th2, tw2, n_filt = dy.shape
    th, tw = th2 // 2, tw2 // 2
    dm = np.empty((16, n_img * th * tw, n_filt), dtype=dy.dtype)
    for n in prange(n_img):
        r = np.empty((8, n_filt), dtype=dy.dtype)  # r[2*i + e] = (A dY)[i, e]
        for ty in range(th):
            for tx in range(tw):
                p = (n * th + ty) * tw + tx
                y, x = 2 * ty, 2 * tx
                for e in range(2):  # A down column e
                    for f in range(n_filt):
                        r[e, f], r[2 + e, f], r[4 + e, f], r[6 + e, f] = _a(dy[n, y, x + e, f], dy[n, y + 1, x + e, f])
                for i in range(4):  # then along row i
                    for f in range(n_filt):
                        dm[4 * i, p, f], dm[4 * i + 1, p, f], dm[4 * i + 2, p, f], dm[4 * i + 3, p, f] = _a(
                            r[2 * i, f], r[2 * i + 1, f])
    return dm


@njit(cache=True)
def _winograd_input_adjoint_kernel(dv, n_img, th, tw):
    """Adjoint of the input transform: dxp[n, 2*ty:2*ty + 4, 2*tx:2*tx + 4, c] += B dV B^T
    (channels last, zero-padded like the forward's input; the caller crops the padding).
    Neighbouring tiles overlap, so the tiles of one image run in order (images in parallel)."""
    c_in = dv.shape[2]
    dxp = np.zeros((n_img, 2 * th + 2, 2 * tw + 2, c_in), dtype=dv.dtype)
    for n in prange(n_img):
        s = np.empty((16, c_in), dtype=dv.dtype)  # s[4*i + e] = (dV B^T)[i, e]
        for ty in range(th):
            for tx in range(tw):
                p = (n * th + ty) * tw + tx
                y, x = 2 * ty, 2 * tx
                for i in range(4):  # B^T along row i (the adjoint of the forward's last pass)
                    for c in range(c_in):
                        s[4 * i, c], s[4 * i + 1, c], s[4 * i + 2, c], s[4 * i + 3, c] = _b(
                            dv[4 * i, p, c], dv[4 * i + 1, p, c], dv[4 * i + 2, p, c], dv[4 * i + 3, p, c])
                for e in range(4):  # then B down column e, added into the image
                    for c in range(c_in):
                        d0, d1, d2, d3 = _b(s[e, c], s[4 + e, c], s[8 + e, c], s[12 + e, c])
                        dxp[n, y, x + e, c] += d0
                        dxp[n, y + 1, x + e, c] += d1
                        dxp[n, y + 2, x + e, c] += d2
                        dxp[n, y + 3, x + e, c] += d3
    return dxp
