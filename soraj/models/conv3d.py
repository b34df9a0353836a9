"""3D convolution helpers shared by the VAE and its discriminator: the CPU conv path and the
logical axis names of their kernels."""

import flax.linen as nn
import jax

# Logical axis names of a 3D conv kernel (kt, kh, kw, F_in, F_out) and a dense one (F_in, F_out).
CONV_KERNEL_AXES = ("conv_time", "conv_height", "conv_width", "conv_in", "conv_out")
DENSE_KERNEL_AXES = ("conv_in", "conv_out")


def box_conv_net_kernels(variables):
    """Variables of a conv net (the VAE, the discriminator) with every kernel boxed in its
    logical axis names, for sharding.sharded_init; biases and norm scales stay plain.

    In these nets every 5D param is a 3D conv kernel and every 2D one a dense kernel. Boxing
    after init rather than in each layer keeps the plain `init` (and so every checkpoint and
    export) exactly as it was.
    """
    axes = {5: CONV_KERNEL_AXES, 2: DENSE_KERNEL_AXES}

    def box(x):
        return nn.LogicallyPartitioned(x, axes[x.ndim]) if x.ndim in axes else x

    return jax.tree.map(box, variables)


def conv3d_as_frame_convs(lhs, rhs, window_strides, padding, *, precision=None, **unused):
    """Channel-last 3D conv (time unpadded) as a sum of one batched 2D conv per temporal tap.

    Same arithmetic as lax's 3D conv, but XLA:CPU runs 2D convs several times faster (the
    tiny VAE's train step measured 2-4x faster), which is what makes CPU training practical.
    """
    (kt, _, _, c_in, _), (st, sh, sw) = rhs.shape, window_strides
    b, t_padded, h, w, _ = lhs.shape  # (B, T+kt-1, H, W, F_in)
    t_out = (t_padded - kt) // st + 1
    out = 0
    for tap in range(kt):
        frames = lhs[:, tap : tap + st * (t_out - 1) + 1 : st]  # (B, T', H, W, F_in)
        out = out + jax.lax.conv_general_dilated(
            frames.reshape(b * t_out, h, w, c_in),
            rhs[tap],
            (sh, sw),
            padding[1:],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )  # (B·T', H', W', F)
    return out.reshape(b, t_out, *out.shape[1:])  # (B, T', H', W', F)
