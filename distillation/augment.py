"""Differentiable Siamese Augmentation (DSA) transforms for evaluation, in JAX.

The DSA set used by the paper's evaluation with augmentation: colour (brightness, saturation,
contrast), crop (random translation by up to 1/8 of the size, zero fill), rotate (±15°), scale
(0.8–1.2), cutout (one square of half the size zeroed), and flip. Grayscale sets skip flip and
colour. Every image of a batch draws its own parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def _affine(image: Array, matrix: Array, shift: Array) -> Array:
    """Resample ``image`` (H, W, C) at ``matrix @ (p − centre) + centre + shift``, zero fill."""
    h, w, c = image.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing="ij"
    )
    centre = jnp.asarray([(h - 1) / 2, (w - 1) / 2], image.dtype)
    coords = jnp.stack([ys.ravel(), xs.ravel()]) - centre[:, None]
    src = matrix @ coords + centre[:, None] + shift[:, None]

    def channel(ch):
        return jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=1, cval=0.0)

    out = jax.vmap(channel, in_axes=2, out_axes=1)(image)
    return out.reshape(h, w, c)


def _augment_one(image: Array, key: PRNGKeyArray, grayscale: bool) -> Array:
    keys = jax.random.split(key, 9)
    h, w, _ = image.shape
    dtype = image.dtype
    if not grayscale:
        # colour: brightness, saturation, contrast (DSA's ranges)
        image = image + jax.random.uniform(keys[0], (), dtype, -0.5, 0.5)
        mean_c = image.mean(axis=-1, keepdims=True)
        image = (image - mean_c) * jax.random.uniform(keys[1], (), dtype, 0.0, 2.0) + mean_c
        mean_all = image.mean()
        image = (image - mean_all) * jax.random.uniform(keys[2], (), dtype, 0.5, 1.5) + mean_all
        flip = jax.random.bernoulli(keys[3])
        image = jnp.where(flip, image[:, ::-1], image)
    angle = jax.random.uniform(keys[4], (), dtype, -15.0, 15.0) * jnp.pi / 180
    scale = jax.random.uniform(keys[5], (2,), dtype, 0.8, 1.2)
    rot = jnp.asarray([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
    shift = jax.random.uniform(keys[6], (2,), dtype, -0.125, 0.125) * jnp.asarray([h, w], dtype)
    image = _affine(image, rot @ jnp.diag(1.0 / scale), shift)
    # cutout: a square of half the size, centred anywhere
    cy = jax.random.randint(keys[7], (), 0, h)
    cx = jax.random.randint(keys[8], (), 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = (jnp.abs(ys - cy) < h // 4) & (jnp.abs(xs - cx) < w // 4)
    return jnp.where(inside[..., None], 0.0, image)


def dsa_augment(images: Array, *, key: PRNGKeyArray, grayscale: bool) -> Array:
    """Augment a batch ``(N, H, W, C)`` with independent DSA parameters per image."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda im, k: _augment_one(im, k, grayscale))(images, keys)
