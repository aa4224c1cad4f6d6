"""Augmentations for evaluation, in JAX.

* :func:`released_augment` (the default of ``rcig evaluate --augment``): the released code's
  evaluation (``eval.py`` with ``augmax.get_aug_by_name``): every image gets **one** transform
  drawn uniformly from flip (p = ½), colour (brightness ±0.25, contrast and saturation ×e^±0.25,
  log-uniform), crop (zoom 0.8–1.25, log-uniform, random centre), rotate (±15°), translate (up to
  1/8 of the size) and cutout (one square of a quarter of the size, zero); grayscale sets draw
  from crop, rotate, translate and cutout (their ``test_aug`` for MNIST). Geometric transforms
  resample bilinearly and repeat the edge pixels, as ``augmax`` does.
* :func:`dsa_augment` (``--augment-style dsa``): the DSA set, every transform composed on every
  image: colour (brightness, saturation,
contrast), crop (random translation by up to 1/8 of the size, zero fill), rotate (±15°), scale
(0.8–1.2), cutout (one square of half the size zeroed), and flip. Grayscale sets skip flip and
colour. Every image of a batch draws its own parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray


def with_mirrors(images: Array, labels: Array) -> tuple[Array, Array]:
    """The images followed by their horizontal mirrors, the labels repeated: the flip strategy
    of distillation (every inner problem sees both) and of evaluation (``flip=True`` sets)."""
    return jnp.concatenate([images, images[:, :, ::-1]]), jnp.concatenate([labels, labels])


def _affine(image: Array, matrix: Array, shift: Array, mode: str = "constant") -> Array:
    """Resample ``image`` (H, W, C) at ``matrix @ (p − centre) + centre + shift``, zero fill
    (``mode="constant"``) or the nearest edge pixel (``mode="nearest"``)."""
    h, w, c = image.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing="ij"
    )
    centre = jnp.asarray([(h - 1) / 2, (w - 1) / 2], image.dtype)
    coords = jnp.stack([ys.ravel(), xs.ravel()]) - centre[:, None]
    src = matrix @ coords + centre[:, None] + shift[:, None]

    def channel(ch):
        return jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=1, mode=mode, cval=0.0)

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


def _log_uniform(key, low: float, high: float, dtype) -> Array:
    return jnp.exp(jax.random.uniform(key, (), dtype, jnp.log(low), jnp.log(high)))


def _released_transforms(grayscale: bool):
    """The released evaluation's transforms, each ``(image, key) -> image``."""

    def flip(image, key):
        return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)

    def colour(image, key):
        kb, kc, ks = jax.random.split(key, 3)
        dtype = image.dtype
        image = image + jax.random.uniform(kb, (), dtype, -0.25, 0.25)
        mean = image.mean(keepdims=True)
        image = (image - mean) * _log_uniform(
            kc, float(np.exp(-0.25)), float(np.exp(0.25)), dtype
        ) + mean
        mean = image.mean(axis=-1, keepdims=True)
        return (image - mean) * _log_uniform(
            ks, float(np.exp(-0.25)), float(np.exp(0.25)), dtype
        ) + mean

    def crop(image, key):
        kz, kc = jax.random.split(key)
        h, w, _ = image.shape
        zoom = _log_uniform(kz, 0.8, 1.25, image.dtype)
        limit = jnp.abs(jnp.asarray([h, w], image.dtype) * (zoom - 1.0)) / 2
        centre = jax.random.uniform(kc, (2,), image.dtype, -1.0, 1.0) * limit
        return _affine(image, jnp.eye(2, dtype=image.dtype) / zoom, centre / zoom, "nearest")

    def rotate(image, key):
        angle = jax.random.uniform(key, (), image.dtype, -15.0, 15.0) * jnp.pi / 180
        rot = jnp.asarray([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
        return _affine(image, rot, jnp.zeros(2, image.dtype), "nearest")

    def translate(image, key):
        h, w, _ = image.shape
        limit = jnp.asarray([h, w], image.dtype) / 8
        shift = jax.random.uniform(key, (2,), image.dtype, -1.0, 1.0) * limit
        return _affine(image, jnp.eye(2, dtype=image.dtype), shift, "nearest")

    def cutout(image, key):
        h, w, _ = image.shape
        sh, sw = h // 4, w // 4
        y = jax.random.randint(key, (), 0, h - sh + 1)
        x = jax.random.randint(jax.random.fold_in(key, 1), (), 0, w - sw + 1)
        ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        inside = (ys >= y) & (ys < y + sh) & (xs >= x) & (xs < x + sw)
        return jnp.where(inside[..., None], 0.0, image)

    if grayscale:
        return (crop, rotate, translate, cutout)
    return (flip, colour, crop, rotate, translate, cutout)


def released_augment(images: Array, *, key: PRNGKeyArray, grayscale: bool) -> Array:
    """Augment a batch ``(N, H, W, C)`` the way the released evaluation does: one transform per
    image, drawn uniformly from the set for colour or grayscale images (module docstring)."""
    transforms = _released_transforms(grayscale)

    def one(image, k):
        k_pick, k_apply = jax.random.split(k)
        which = jax.random.randint(k_pick, (), 0, len(transforms))
        return jax.lax.switch(which, transforms, image, k_apply)

    return jax.vmap(one)(images, jax.random.split(key, images.shape[0]))
