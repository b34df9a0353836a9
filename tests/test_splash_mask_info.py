"""The splash kernel soraj builds (closed-form mask info for its full mask) against the one
jax's own `make_splash_mha` builds from a `FullMask` by processing it block by block."""

import jax
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from soraj.models.splash_kernel import splash_kernel

LENGTHS = [(256, 256), (384, 1024), (1536, 512), (2048, 2048)]


def library_kernel(num_heads, q_length, kv_length, save_residuals):
    ours = splash_kernel(q_length, kv_length, True, save_residuals)
    mask = splash.MultiHeadMask([splash.FullMask((q_length, kv_length))] * num_heads)
    with jax.ensure_compile_time_eval():
        theirs = splash.make_splash_mha(
            mask,
            block_sizes=ours.kwargs["block_sizes"],
            head_shards=1,
            q_seq_shards=1,
            save_residuals=save_residuals,
            interpret=True,
        )
    return ours, theirs


@pytest.mark.parametrize("q_length, kv_length", LENGTHS)
@pytest.mark.parametrize("save_residuals", [False, True])
def test_mask_info_equals_the_library_processing(q_length, kv_length, save_residuals):
    ours, theirs = library_kernel(4, q_length, kv_length, save_residuals)
    for name in ("fwd_mask_info", "dq_mask_info", "dkv_mask_info"):
        mine, reference = getattr(ours, name), getattr(theirs, name)
        for field in reference._fields:
            a, b = getattr(mine, field), getattr(reference, field)
            assert (a is None) == (b is None), (name, field)
            if b is None or isinstance(b, bool):
                assert a == b, (name, field)
                continue
            assert np.asarray(a).dtype == np.asarray(b).dtype, (name, field)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}.{field}")
    assert ours.kwargs == theirs.kwargs


def test_kernel_output_equals_the_library_kernel():
    ours, theirs = library_kernel(2, 256, 384, False)
    q, k, v = (
        jax.random.normal(key, (2, length, 32))
        for key, length in zip(jax.random.split(jax.random.key(0), 3), (256, 384, 384), strict=True)
    )
    ids = splash.SegmentIds(
        q=np.repeat(np.arange(2), 128).astype(np.int32),
        kv=np.repeat(np.arange(3), 128).astype(np.int32) % 2,
    )
    np.testing.assert_array_equal(ours(q, k, v, segment_ids=ids), theirs(q, k, v, segment_ids=ids))
