"""Run by tests/test_context_parallel.py in a subprocess with 8 fake CPU devices: the four
context-parallel strategies of soraj/models/context_attention.py against the dense masked
attention on one device (forward and gradients, packed segments not aligned to the shards,
padding), the ring's hop skipping, which collectives each strategy emits, the ring's memory
against its hop count, and the sharded DiT train step with context 2, 4 and 8 against the
one-device step. Exits non-zero on any failure; prints one line per check.
"""

import functools
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_step_check import assert_trees_close, tiny_setup

from soraj import sharding
from soraj.models.context_attention import (
    CONTEXT_STRATEGIES,
    context_axis,
    context_parallel_attention,
    ulysses_group,
)
from soraj.models.dit import DiT, DiTConfig
from soraj.models.layers import attention

# float32 attention split into blocks merges in another order than the dense softmax.
FORWARD_ATOL, GRADIENT_ATOL = 1e-5, 1e-4
# Params after two Adam steps: Adam divides each update by the gradient's running RMS, so a
# parameter whose gradient is near 0 (the zero-initialised adaLN) turns a float32 rounding
# difference of the ring's 8-hop merge order into a visible share of its update (1.0e-6 of a
# 4e-5 update was seen). 1e-5 is 2 % of one full step at this config's learning rate (5e-4):
# far below what a wrong attention moves (every param, by whole steps).
PARAM_ATOL = 1e-5


def make_mesh(data=1, fsdp=1, tensor=1, context=1):
    sizes = dict(data=data, fsdp=fsdp, tensor=tensor, context=context)
    devices = jax.devices()[: data * fsdp * tensor * context]
    return sharding.make_mesh(ml_collections.ConfigDict(sizes), devices)


def packed_ids(rng, batch: int, length: int, longest: int = 20) -> np.ndarray:
    """Rows of contiguous segments of random lengths (1..longest), so boundaries fall anywhere
    in a shard, then a padding tail of 0s; row 0 is one segment over the whole row."""
    ids = np.zeros((batch, length), np.int32)
    ids[0] = 1
    for row in range(1, batch):
        start, segment = 0, 1
        end = length - rng.integers(1, 8)  # padding tail
        while start < end:
            size = int(rng.integers(1, longest + 1))
            ids[row, start : min(end, start + size)] = segment
            start, segment = start + size, segment + 1
    return ids


def case(seed: int, batch: int, length: int, heads: int, head_dim: int = 8):
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (
        rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32) for _ in range(4)
    )
    return q, k, v, packed_ids(rng, batch, length), d_out


def dense_attention(q, k, v, ids):
    return attention(q, k, v, q_segment_ids=ids, kv_segment_ids=ids, backend="xla")


def on_mesh(mesh, fn):
    """fn traced under the DiT rules and the mesh, its inputs laid out replicated on it."""

    def traced(*args):
        with (
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
            nn.logical_axis_rules(sharding.DIT_RULES),
        ):
            return fn(*args)

    return traced, NamedSharding(mesh, P())


def value_and_grads(attend, q, k, v, ids, d_out, mesh=None):
    """attend(q, k, v, ids) and the gradients of Σ out · d_out with respect to q, k, v."""

    def loss(q, k, v, ids):
        return jnp.sum(attend(q, k, v, ids) * d_out)

    if mesh is None:
        forward, backward = jax.jit(attend), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    else:
        traced, replicated = on_mesh(mesh, attend)
        traced_loss, _ = on_mesh(mesh, loss)
        forward = jax.jit(traced, in_shardings=(replicated,) * 4)
        backward = jax.jit(jax.grad(traced_loss, argnums=(0, 1, 2)), in_shardings=(replicated,) * 4)
    return np.asarray(forward(q, k, v, ids)), [np.asarray(g) for g in backward(q, k, v, ids)]


def strategy_attention(strategy, backend):
    def attend(q, k, v, ids):
        return attention(
            q,
            k,
            v,
            q_segment_ids=ids,
            kv_segment_ids=ids,
            backend=backend,
            context_parallel=strategy,
        )

    return attend


def assert_matches_dense(strategy, backend, mesh, q, k, v, ids, d_out, where):
    want_out, want_grads = value_and_grads(dense_attention, q, k, v, ids, d_out)
    out, grads = value_and_grads(strategy_attention(strategy, backend), q, k, v, ids, d_out, mesh)
    np.testing.assert_allclose(out, want_out, atol=FORWARD_ATOL, err_msg=where)
    assert np.all(out[ids == 0] == 0), f"{where}: padding queries must output exactly 0"
    for name, got, want in zip("qkv", grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=GRADIENT_ATOL, err_msg=f"{where} d{name}")
    return float(np.abs(out - want_out).max()), max(
        float(np.abs(g - w).max()) for g, w in zip(grads, want_grads, strict=True)
    )


# ---- Checks ----


def check_strategies_match_dense():
    """Every strategy on meshes that split batch, heads and tokens, against dense attention."""
    meshes = [
        dict(context=8),
        dict(data=2, context=4),
        dict(tensor=2, context=4),
        dict(data=2, fsdp=2, context=2),
    ]
    q, k, v, ids, d_out = case(0, batch=4, length=72, heads=8)  # 72: padded to 9 per device
    for sizes in meshes:
        for strategy in CONTEXT_STRATEGIES:
            start = time.time()
            errors = assert_matches_dense(
                strategy, "xla", make_mesh(**sizes), q, k, v, ids, d_out, f"{strategy} {sizes}"
            )
            print(f"{strategy:10s} xla {sizes}: max error {errors} ({time.time() - start:.1f} s)")


def check_usp_groups():
    """usp with Ulysses groups of 4 and 2 (heads 4 and 6 on 8 devices): the ring runs 2 and 4
    hops between the groups."""
    mesh = make_mesh(context=8)
    for heads, group in ((4, 4), (6, 2)):
        assert ulysses_group(8, heads) == group
        q, k, v, ids, d_out = case(1, batch=2, length=64, heads=heads)
        errors = assert_matches_dense("usp", "xla", mesh, q, k, v, ids, d_out, f"usp {heads}")
        print(f"usp, {heads} heads on 8 devices: groups of {group}, max error {errors}")


def check_splash():
    """The splash backend (interpreted on CPU): all-gather and Ulysses run splash on the local
    attention, ring and usp its forward-with-residuals and backward kernels per hop."""
    q, k, v, ids, d_out = case(2, batch=2, length=200, heads=4)
    for strategy, sizes in (
        ("all_gather", dict(data=2, context=2)),
        ("ulysses", dict(data=2, context=2)),
        ("ring", dict(context=4)),
        ("usp", dict(context=8)),  # 4 heads: groups of 4, two ring hops
    ):
        start = time.time()
        errors = assert_matches_dense(
            strategy, "splash", make_mesh(**sizes), q, k, v, ids, d_out, f"splash {strategy}"
        )
        print(f"{strategy:10s} splash {sizes}: max error {errors} ({time.time() - start:.1f} s)")


def check_cross_attention_splits_queries():
    """Cross-attention to text every device holds whole ("queries"): each device attends its
    own tokens, for the xla and splash backends, equal to dense attention on one device."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2, 64, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 12, 4, 8)).astype(np.float32) for _ in range(2))
    q_ids = packed_ids(rng, 2, 64)
    kv_ids = np.repeat(np.arange(1, 5, dtype=np.int32), 3)[None].repeat(2, 0)
    kv_mask = rng.random((2, 12)) > 0.2
    mesh = make_mesh(context=8)
    want = attention(q, k, v, q_segment_ids=q_ids, kv_segment_ids=kv_ids, kv_mask=kv_mask)
    for backend in ("xla", "splash"):

        def cross(q, backend=backend):
            return attention(
                q,
                k,
                v,
                q_segment_ids=q_ids,
                kv_segment_ids=kv_ids,
                kv_mask=kv_mask,
                backend=backend,
                context_parallel="queries",
            )

        traced, _ = on_mesh(mesh, cross)
        step = jax.jit(traced, in_shardings=sharding.tokens_sharding(mesh))
        np.testing.assert_allclose(step(q), want, atol=FORWARD_ATOL, err_msg=backend)
    print("cross-attention: queries split over context, xla and splash equal dense attention")


def check_dit_holds_no_whole_row():
    """A scanned, rematerialised DiT step with splash and the ring on context 8: no float array
    in the compiled program spans the whole row, only each device's tokens (all-gather and
    Ulysses hold every token's keys by design; the ring is the strategy that must not). (Before
    cross-attention ran in shard_map, GSPMD left splash's interpreted loop inside the scanned
    block unpartitioned and every device held (N, L, 128) arrays of all L tokens.)"""
    length, mesh = 8 * 256, make_mesh(context=8)
    rng = np.random.default_rng(6)
    inputs = dict(
        x_t=rng.normal(size=(1, length, 16)).astype(np.float32),
        t=np.full((1, length), 0.5, np.float32),
        coords=np.zeros((1, length, 3), np.int32),
        segment_ids=np.ones((1, length), np.int32),
        text=rng.normal(size=(1, 1, 4, 32)).astype(np.float32),
        text_mask=np.ones((1, 1, 4), bool),
    )
    for strategy in ("ring",):
        config = DiTConfig(
            width=64,
            depth=2,
            num_heads=8,
            patch_size=(1, 1, 1),
            latent_channels=16,
            text_width=32,
            attention_backend="splash",
            context_parallel=strategy,
            scan_blocks=True,
            remat="full",
            modulation="per_segment",
        )
        dit = DiT(config)
        params = jax.eval_shape(functools.partial(dit.init, jax.random.key(0), **inputs))
        params = params["params"]

        def loss(params, inputs, dit=dit):
            return jnp.mean(jnp.square(dit.apply({"params": params}, **inputs)))

        traced, replicated = on_mesh(mesh, jax.grad(loss))
        split = {
            k: replicated if k.startswith("text") else sharding.tokens_sharding(mesh)
            for k in inputs
        }
        every_param = jax.tree.map(lambda _, r=replicated: r, params)
        step = jax.jit(traced, in_shardings=(every_param, split))
        text = step.lower(params, inputs).compile().as_text()
        whole = re.findall(rf"(?:f32|bf16)\[[0-9,]*\b{length}\b[0-9,]*\]", text)
        assert not whole, f"{strategy}: arrays of the whole row {sorted(set(whole))[:4]}"
    print(f"DiT step, splash, context 8: no float array of the whole {length}-token row")


def check_hop_skipping_is_exact():
    """Ring hops whose blocks share no segment are skipped: the same result to the bit."""
    mesh = make_mesh(context=8)
    q, k, v, ids, d_out = case(3, batch=2, length=64, heads=2)
    ids[0] = np.repeat(np.arange(1, 9), 8)  # row 0: one segment per shard, most hops skipped
    results = []
    for skip in (True, False):

        def attend(q, k, v, ids, skip=skip):
            return context_parallel_attention(
                q,
                k,
                v,
                ids,
                strategy="ring",
                axis=context_axis(),
                ring_kernel="reference",
                local_attention=dense_attention,
                skip_disjoint_hops=skip,
            )

        results.append(value_and_grads(attend, q, k, v, ids, d_out, mesh))
    (out_skip, grads_skip), (out_all, grads_all) = results
    np.testing.assert_array_equal(out_skip, out_all)
    for got, want in zip(grads_skip, grads_all, strict=True):
        np.testing.assert_array_equal(got, want)
    print("ring: skipping disjoint hops gives the same output and gradients, bit for bit")


def collectives(strategy, mesh, q, k, v, ids, d_out) -> dict:
    """Collective ops in the compiled forward + backward, as {op: [element types]}."""

    def loss(q, k, v, ids):
        return jnp.sum(strategy_attention(strategy, "xla")(q, k, v, ids) * d_out)

    traced, replicated = on_mesh(mesh, loss)
    sharded = NamedSharding(mesh, P(None, "context"))
    step = jax.jit(jax.value_and_grad(traced, argnums=(0, 1, 2)), in_shardings=(sharded,) * 4)
    text = step.lower(q, k, v, ids).compile().as_text()
    found = {}
    for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter", "all-reduce"):
        # "%name = f32[...] op-start(" or "op(": the result's element type and the op.
        pattern = rf"= \(?(\w+)\[[^\n]*? {op}(?:-start)?\("
        found[op] = re.findall(pattern, text)
    return found


def check_collectives():
    """The ring never gathers keys or values: its only all-gather is of the int32 segment ids,
    and it moves blocks by collective permutes. Ulysses exchanges by all-to-all."""
    mesh = make_mesh(context=8)
    q, k, v, ids, d_out = case(4, batch=2, length=64, heads=8)
    ring = collectives("ring", mesh, q, k, v, ids, d_out)
    assert ring["collective-permute"], ring
    assert set(ring["all-gather"]) <= {"s32"}, f"ring gathers floats: {ring['all-gather']}"
    ulysses = collectives("ulysses", mesh, q, k, v, ids, d_out)
    assert len(ulysses["all-to-all"]) >= 4 and not ulysses["collective-permute"], ulysses
    assert set(ulysses["all-gather"]) <= {"s32"}, ulysses
    gathered = collectives("all_gather", mesh, q, k, v, ids, d_out)
    assert "f32" in gathered["all-gather"], gathered
    print(
        "collectives: ring",
        {op: len(types) for op, types in ring.items()},
        "ulysses",
        {op: len(types) for op, types in ulysses.items()},
    )


def temp_bytes(strategy, context, per_device=256, heads=4, head_dim=32, backend="xla", remat=False):
    """Compiled temporary bytes per device of the gradient of one attention; with remat, two
    rematerialised layers of it under a scan, as the DiT's blocks train (scan_blocks, remat)."""
    mesh = make_mesh(context=context)
    length = per_device * context
    x = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    attend = strategy_attention(strategy, backend)

    def loss(q, k, v, ids):
        if not remat:
            return jnp.sum(attend(q, k, v, ids))
        layer = jax.checkpoint(lambda h, _: (attend(h, k, v, ids), None), prevent_cse=False)
        return jnp.sum(jax.lax.scan(layer, q, None, length=2)[0])

    traced, _ = on_mesh(mesh, loss)
    sharded = NamedSharding(mesh, P(None, "context"))
    step = jax.jit(jax.grad(traced, argnums=(0, 1, 2)), in_shardings=(sharded,) * 4)
    return step.lower(x, x, x, ids).compile().memory_analysis().temp_size_in_bytes


def check_ring_memory():
    """With L/c tokens per device fixed, the ring's temporary memory (forward + backward) stays
    flat from 2 to 8 hops, where gathering all keys grows with c; also rematerialised with the
    splash kernel in scanned layers, as training runs it (there a scan over hops had JAX stack
    every hop's splash residuals: 8.4 → 12.9 MiB from 2 to 8 hops)."""
    ring = {c: temp_bytes("ring", c) for c in (2, 4, 8)}
    gather = {c: temp_bytes("all_gather", c) for c in (2, 8)}
    assert ring[8] <= 1.1 * ring[2], f"ring temp bytes grow with hops: {ring}"
    assert gather[8] >= 3 * gather[2], f"all-gather should grow with c: {gather}"
    remat = {c: temp_bytes("ring", c, per_device=512, backend="splash", remat=True) for c in (2, 8)}
    assert remat[8] <= 1.1 * remat[2], f"rematerialised splash ring grows with hops: {remat}"
    mib = lambda d: {c: round(b / 2**20, 2) for c, b in d.items()}  # noqa: E731
    print(
        f"temp MiB per device, 256 tokens each: ring {mib(ring)}, all_gather {mib(gather)}; "
        f"512 each, splash ring rematerialised: {mib(remat)}"
    )


def check_train_step():
    """The DiT train step with the tokens over context 2, 4 and 8 (each strategy at least once)
    equals the one-device step: losses, params, moments and EMA after two steps."""
    runs = (
        ("all_gather", dict(data=4, context=2)),
        ("ring", dict(data=2, context=4)),
        ("ulysses", dict(context=8)),
        ("usp", dict(context=8)),
        ("ring", dict(context=8)),
    )
    rng, step_rng = jax.random.key(0), jax.random.key(1)
    references = {}
    for strategy, sizes in runs:
        start = time.time()
        # 8 heads: Ulysses divides them over 8 devices; usp, with 4 of them, forms groups of 4.
        heads = 4 if strategy == "usp" else 8
        init_state, step, batch = tiny_setup(
            width=8 * heads, num_heads=heads, context_parallel=strategy
        )
        if heads not in references:
            plain_step = jax.jit(step)
            state = nn.unbox(jax.jit(init_state)(rng))
            losses = []
            for _ in range(2):
                state, metrics = plain_step(state, batch, step_rng)
                losses.append(float(metrics["loss"]))
            references[heads] = (state, losses)
        reference, reference_losses = references[heads]
        mesh = make_mesh(**sizes)
        state, shardings = sharding.sharded_init(init_state, rng, mesh, sharding.DIT_RULES)
        jitted = sharding.jit_train_step(step, shardings, mesh, sharding.DIT_RULES)
        losses = []
        for _ in range(2):
            state, metrics = jitted(state, sharding.shard_batch(batch, mesh), step_rng)
            losses.append(float(metrics["loss"]))
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, err_msg=strategy)
        assert_trees_close(state, reference, f"{strategy} {sizes}", atol=PARAM_ATOL)
        print(f"train step, {strategy} on {sizes}: losses {losses} ({time.time() - start:.1f} s)")


def main():
    if jax.device_count() < 8:
        sys.exit(
            f"context_parallel_check needs 8 devices, found {jax.device_count()}: run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu"
        )
    checks = [
        check_strategies_match_dense,
        check_usp_groups,
        check_splash,
        check_cross_attention_splits_queries,
        check_dit_holds_no_whole_row,
        check_hop_skipping_is_exact,
        check_collectives,
        check_ring_memory,
        check_train_step,
    ]
    only = set(sys.argv[1:])
    for check in checks:
        if not only or check.__name__ in only:
            check()
    print("ALL OK")


if __name__ == "__main__":
    main()
