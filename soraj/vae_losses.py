"""VAE training losses: pixel reconstruction (L1 or Charbonnier) + squared error + KL, the GAN
generator term, and VQGAN's adaptive weight that balances the two at the decoder's last layer."""

import jax
import jax.numpy as jnp

from soraj.models import discriminator as disc
from soraj.models.vae import kl_divergence

PIXEL_LOSSES = ("l1", "charbonnier")

# ---- Reconstruction ----


def pixel_loss(error: jax.Array, loss_config) -> jax.Array:
    if loss_config.pixel_loss == "charbonnier":
        eps = loss_config.charbonnier_epsilon
        return jnp.mean(jnp.sqrt(jnp.square(error) + eps**2))
    return jnp.mean(jnp.abs(error))


def edge_loss(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Squared error of the spatial finite differences (the gradient difference loss of
    Mathieu et al., 2016). (..., H, W, C) → scalar.

    Squared pixel error is satisfied by a blur that gets a small object's mean colour right;
    its edges are a few percent of the pixels. Differences are non-zero only at edges, so this
    term is all edge: it is what keeps corners, which tell a square from a circle."""
    loss = 0.0
    for axis in (-3, -2):  # height, width
        difference = jnp.diff(reconstruction, axis=axis) - jnp.diff(target, axis=axis)
        loss = loss + jnp.mean(jnp.square(difference))
    return loss


def reconstruction_objective(outputs: dict, videos: dict, names, loss_config):
    """Mean over clip shapes of pixel_weight × L1 (or Charbonnier) + mse_weight × squared error
    + edge_weight × edge_loss, plus kl_weight × KL per sample. Squared error carries most of the
    weight on Shapes: on flat frames L1's constant-size gradient settles on the background first
    and learns small objects slowly (experiments/shapes/vae_loss_comparison.py)."""
    pixel, mse, edge, kl, metrics = [], [], [], [], {}
    for name in names:
        reconstruction, mean, logvar = outputs[name]
        error = reconstruction - videos[name]
        pixel.append(pixel_loss(error, loss_config))
        mse.append(jnp.mean(jnp.square(error)))
        edge.append(edge_loss(reconstruction, videos[name]))
        kl.append(kl_divergence(mean, logvar))
        metrics[f"mse_{name}"] = mse[-1]
    pixel, mse, edge, kl = (jnp.mean(jnp.stack(terms)) for terms in (pixel, mse, edge, kl))
    loss = loss_config.pixel_weight * pixel + loss_config.mse_weight * mse
    loss = loss + loss_config.edge_weight * edge + loss_config.kl_weight * kl
    metrics = {loss_config.pixel_loss: pixel, "mse": mse, "edge": edge, "kl": kl, **metrics}
    return loss, metrics


# ---- Adversarial ----


def adversarial_objective(outputs: dict, disc_params, discriminator, names) -> jax.Array:
    """The generator's hinge loss, mean over clip shapes."""
    losses = [
        disc.hinge_generator_loss(discriminator.apply({"params": disc_params}, outputs[n][0]))
        for n in names
    ]
    return jnp.mean(jnp.stack(losses))


def decoder_last_layer(vae_params) -> jax.Array:
    """The kernel of the decoder's output conv: the layer VQGAN's adaptive weight looks at."""
    decoder = vae_params["decoder"]
    convs = [key for key in decoder if key.startswith("CausalConv3d_")]
    last = max(convs, key=lambda key: int(key.rsplit("_", 1)[1]))
    return decoder[last]["Conv_0"]["kernel"]  # (kt, kh, kw, F, 3)


def adaptive_gan_weight(reconstruction_grad, adversarial_grad, max_weight: float) -> jax.Array:
    """‖∇L_rec‖ / (‖∇L_adv‖ + 1e-4), clipped to [0, max_weight]: balances the GAN term against
    reconstruction at the layer both act on directly. A weight, not a path for gradients."""
    ratio = jnp.linalg.norm(reconstruction_grad) / (jnp.linalg.norm(adversarial_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))
