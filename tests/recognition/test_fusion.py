"""edge.recognition.fusion.fuse_embeddings: the one function that fuses a track's frames (live tracker and
``eval --track-size``) and a subject's enrolment templates (Matcher with a score model)."""
from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InputError
from edge.recognition.fusion import fuse_embeddings, view_spread


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_one_embedding_is_returned_unchanged():
    e = _unit(np.random.default_rng(0).normal(size=(1, 128)))
    v = fuse_embeddings(e)
    assert v.shape == (128,) and v.dtype == np.float32
    assert np.allclose(v, e[0], atol=1e-6)


def test_unweighted_is_the_normalised_mean_direction():
    e = _unit(np.random.default_rng(1).normal(size=(5, 16)))
    v = fuse_embeddings(e)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(v, _unit(e.sum(axis=0)), atol=1e-6)
    # order of the frames does not matter
    assert np.allclose(fuse_embeddings(e[::-1]), v, atol=1e-6)


def test_weights_scale_free_and_zero_weight_ignored():
    e = _unit(np.random.default_rng(2).normal(size=(4, 8)))
    w = np.array([0.2, 1.0, 0.5, 0.0], np.float32)
    v = fuse_embeddings(e, w)
    assert np.allclose(v, fuse_embeddings(e, 7.0 * w), atol=1e-6)        # only relative weights count
    assert np.allclose(v, fuse_embeddings(e[:3], w[:3]), atol=1e-6)       # weight 0 = frame left out
    assert np.allclose(v, _unit((e * w[:, None]).sum(axis=0)), atol=1e-6)


def test_fusion_averages_noise_away():
    """Several noisy views of one identity fuse closer to it than a single view (why tracks and
    multi-image enrolment help)."""
    rng = np.random.default_rng(3)
    centre = _unit(rng.normal(size=64))
    views = _unit(centre + 0.15 * rng.normal(size=(5, 64)))
    single = float(np.mean(views @ centre))
    assert float(fuse_embeddings(views) @ centre) > single


@pytest.mark.parametrize("emb, w", [(np.zeros((0, 4), np.float32), None), (np.ones(4, np.float32), None),
                                    (np.ones((2, 4), np.float32), np.array([1.0])),
                                    (np.ones((2, 4), np.float32), np.array([1.0, -1.0])),
                                    (np.ones((2, 4), np.float32), np.array([0.0, 0.0])),
                                    (np.ones((2, 4), np.float32), np.array([np.nan, 1.0]))])
def test_bad_input_is_refused(emb, w):
    with pytest.raises(InputError):
        fuse_embeddings(emb, w)


def test_opposite_embeddings_cannot_be_fused():
    e = np.array([[1, 0], [-1, 0]], np.float32)
    with pytest.raises(InputError, match="cancel"):
        fuse_embeddings(e)


def test_view_spread_says_how_different_the_fused_views_are():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(4, 16)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert view_spread(e[:1]) == 0.0
    assert view_spread(np.stack([e[0]] * 3)) == pytest.approx(0.0, abs=1e-6)
    cos = [float(e[i] @ e[j]) for i in range(4) for j in range(4) if i != j]
    assert view_spread(e) == pytest.approx(1.0 - float(np.mean(cos)), abs=1e-6)
