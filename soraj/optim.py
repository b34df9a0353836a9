"""The optax chain (clipping, AdamW, warm-up, non-finite skipping) and the EMA of params."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up, then constant (decay_steps = 0) or cosine decay to 10 %."""
    warmup = optax.linear_schedule(0.0, optim.learning_rate, max(1, optim.warmup_steps))
    if optim.decay_steps <= 0:
        after = optax.constant_schedule(optim.learning_rate)
    else:
        after = optax.cosine_decay_schedule(optim.learning_rate, optim.decay_steps, alpha=0.1)
    return optax.join_schedules([warmup, after], [optim.warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clip → AdamW; a step with non-finite gradients is skipped rather than applied."""
    chain = optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(
            learning_rate_schedule(optim),
            b1=optim.b1,
            b2=optim.b2,
            weight_decay=optim.weight_decay,
        ),
    )
    # apply_if_finite wraps the clipping too, so a NaN gradient never reaches the moments. Its
    # "give up and apply after N errors" is set out of reach: the trainer counts the streak
    # (nonfinite_counts) and stops the run after config.max_nonfinite_steps instead.
    return optax.apply_if_finite(chain, max_consecutive_errors=NEVER_APPLY_NONFINITE)


# optax applies once its int32 streak counter exceeds this; the counter saturates at it.
NEVER_APPLY_NONFINITE = 2**31 - 1


def nonfinite_counts(opt_state) -> dict:
    """{"nonfinite_streak": consecutive skipped steps, "skipped_steps": skipped in the run}."""
    return {
        "nonfinite_streak": opt_state.notfinite_count,
        "skipped_steps": opt_state.total_notfinite,
    }


def ema_update(ema_params, params, decay: float):
    """ema ← decay·ema + (1 - decay)·params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


class TrainState(flax.struct.PyTreeNode):
    """Everything a trainer checkpoints: float32 params, optimizer state, EMA params, RNG."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, rng: jax.Array):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            rng=rng,
        )

    def ema_decay_at(self, ema_decay: float) -> jax.Array:
        """Warms the EMA up, (1 + step) / (10 + step) capped at ema_decay, so early averages are
        not dominated by the random initialisation."""
        step = self.step.astype(jnp.float32)
        return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))

    def apply_gradients(self, grads, optimizer: optax.GradientTransformation, ema_decay: float):
        updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(
            step=self.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(self.ema_params, params, self.ema_decay_at(ema_decay)),
        )
