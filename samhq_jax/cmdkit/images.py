"""The image files the commands take: their suffixes (reading and checking them is the core's
:mod:`samhq_jax.image_io`)."""

from __future__ import annotations

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
