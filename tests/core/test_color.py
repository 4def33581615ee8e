"""Colour jitter: explicit factors, every dtype, grayscale and C != 3 skip saturation/hue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects.core.color import ColorJitterFactors, color_jitter, sample_color_jitter

LUMA = np.array([0.299, 0.587, 0.114])
SCALE = {np.uint8: 255.0, np.uint16: 65535.0, np.float32: 1.0}


def stepwise_reference(image: np.ndarray, b: float, c: float, s: float, h: float) -> np.ndarray:
    """The four steps one after the other, in float64 (hue: YIQ rotation), without clipping."""
    x = image.astype(np.float64) * b
    color = x.ndim == 3 and x.shape[2] == 3
    mean = (x @ LUMA).mean() if color else x.mean()
    x = (x - mean) * c + mean
    if color:
        gray = (x @ LUMA)[..., None]
        x = (x - gray) * s + gray
        yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        angle = 2 * np.pi * h
        rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        x = x @ (np.linalg.inv(yiq) @ rotation @ yiq).T
    return x


@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    channels=st.sampled_from([None, 1, 3, 4, 5]),
    factors=st.tuples(st.floats(0, 2), st.floats(0, 2), st.floats(0, 2), st.floats(-0.5, 0.5)),
    seed=st.integers(0, 1000),
)
def test_color_jitter_matches_the_stepwise_definition(dtype, channels, factors, seed):
    shape = (7, 9) if channels is None else (7, 9, channels)
    image = (np.random.default_rng(seed).random(shape) * SCALE[dtype] * 0.9).astype(dtype)
    image.setflags(write=False)
    out = color_jitter(image, *factors)
    assert out.dtype == image.dtype and out.shape == image.shape
    expected = stepwise_reference(image, *factors)
    if dtype == np.float32:
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(out, np.clip(np.rint(expected), 0, SCALE[dtype]), atol=1)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 4)])
def test_saturation_and_hue_are_skipped_without_three_channels(shape):
    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    np.testing.assert_array_equal(color_jitter(image, saturation=0.0, hue=0.3), image)
    colour = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    assert not np.array_equal(color_jitter(colour, saturation=0.0, hue=0.3), colour)


def test_identity_factors_and_unclipped_float():
    image = np.random.default_rng(1).normal(0, 2, (6, 6, 3)).astype(np.float32)  # normalised input
    np.testing.assert_allclose(color_jitter(image), image, atol=1e-5)
    assert color_jitter(image, brightness=3.0).max() > 3  # float32 is never clipped


def test_sample_color_jitter_ranges_and_determinism():
    draws = [sample_color_jitter(np.random.default_rng(s), 0.1, 0.2, (0.5, 0.6), 0.05) for s in range(300)]
    b, c, s, h = np.array(draws).T
    assert b.min() >= 0.9 and b.max() <= 1.1 and c.min() >= 0.8 and c.max() <= 1.2
    assert s.min() >= 0.5 and s.max() <= 0.6 and h.min() >= -0.05 and h.max() <= 0.05
    assert sample_color_jitter(np.random.default_rng(3)) == sample_color_jitter(np.random.default_rng(3))
    assert sample_color_jitter(np.random.default_rng(3), 0, 0, 0, 0) == ColorJitterFactors()
    assert sample_color_jitter(np.random.default_rng(3), brightness=1.5).brightness >= 0  # low end cut at 0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: color_jitter(np.zeros((4, 4), np.uint8), brightness=-1), "brightness"),
        (lambda: color_jitter(np.zeros((4, 4), np.uint8), hue=0.6), "hue"),
        (lambda: color_jitter(np.zeros((4, 4), np.int32)), "dtype"),
        (lambda: sample_color_jitter(np.random.default_rng(0), hue=0.7), "hue"),
        (lambda: sample_color_jitter(np.random.default_rng(0), contrast=(1.2, 1.1)), "contrast"),
        (lambda: sample_color_jitter(np.random.default_rng(0), saturation="high"), "saturation"),
    ],
)
def test_color_jitter_rejects_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()
