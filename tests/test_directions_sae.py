"""TopK sparse autoencoder (learned dictionary) on a layer's activations."""

import weakref

import pytest
import torch

from neuronscope.analyses.directions.sae import (Dictionary, evaluate_dictionary,
                                                 train_dictionary)
from neuronscope.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

D, TRUE_FEATURES, FEATURES, K = 32, 64, 128, 6


def _true_features():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(TRUE_FEATURES, D, generator=g)
    return v / v.norm(dim=1, keepdim=True)


TRUE = _true_features()


def synthetic(seed: int, rows: int, batch: int = 512):
    """Callable stream: sparse non-negative codes (about 3 of 64 features active per row, random
    magnitudes in [0.5, 1.5]) mixed by 64 random unit directions in 32 dimensions (superposition),
    generated batch by batch."""
    def epoch():
        g = torch.Generator().manual_seed(seed)
        for _ in range(rows // batch):
            on = torch.rand(batch, TRUE_FEATURES, generator=g) < 3 / TRUE_FEATURES
            mag = 0.5 + torch.rand(batch, TRUE_FEATURES, generator=g)
            yield (on * mag) @ TRUE
    return epoch


@pytest.fixture(scope="module")
def trained():
    # 200k-row epochs, 1000 steps of 512 rows (about 2.5 epochs).
    return train_dictionary(synthetic(0, 200_000), D, features=FEATURES, k=K, steps=1000,
                            lr=4e-3, resample_dead_every=500, layer="synthetic")


def best_cosines(directions: torch.Tensor) -> torch.Tensor:
    return (TRUE @ directions.T).abs().max(dim=1).values


def test_recovers_superposed_features_neurons_do_not(trained):
    dictionary, _ = trained
    dirs = dictionary.directions()
    assert dirs.shape == (FEATURES, D)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(FEATURES), atol=1e-5)
    assert torch.allclose(dictionary.decoder.norm(dim=0), torch.ones(FEATURES), atol=1e-5)
    cos = best_cosines(dirs)
    recovered = float((cos >= 0.9).float().mean())
    neurons = best_cosines(torch.eye(D))
    print(f"dictionary: {recovered:.0%} of true features with cosine >= 0.9 "
          f"(median {cos.median():.3f}, min {cos.min():.3f}); single neurons: best cosine "
          f"max {neurons.max():.3f}, mean {neurons.mean():.3f}")
    assert recovered >= 0.9
    assert float((neurons >= 0.9).float().mean()) == 0.0
    assert neurons.max() < 0.7


def test_metrics_and_codes(trained):
    dictionary, metrics = trained
    print(f"l0 {metrics.l0:.2f}, explained variance {metrics.explained_variance:.3f}, "
          f"dead {metrics.dead_fraction:.3f}")
    assert metrics.l0 <= K
    assert metrics.explained_variance > 0.9
    assert metrics.dead_fraction <= 0.05
    assert len(metrics.history["loss"]) == 1000
    assert metrics.history["loss"][-1] < metrics.history["loss"][0]
    a = next(iter(synthetic(7, 1024, 1024)()))
    z = dictionary.encode(a)
    assert z.shape == (1024, FEATURES) and (z >= 0).all()
    assert ((z > 0).sum(1) <= K).all()
    rel = ((dictionary.decode(z) - a).norm() / (a - a.mean(0)).norm()) ** 2
    assert rel < 0.15
    # Scale invariance: the same stream times 100 trains to the same kind of dictionary and the
    # scale is undone in encode/decode.
    again = evaluate_dictionary(
        Dictionary(dictionary.layer, dictionary.encoder, dictionary.decoder, dictionary.b_enc,
                   dictionary.b_dec, dictionary.k, dictionary.scale * 100),
        lambda: (b * 100 for b in synthetic(3, 8192)()))
    assert again.explained_variance == pytest.approx(
        evaluate_dictionary(dictionary, synthetic(3, 8192)).explained_variance, abs=1e-4)


def test_resampling_revives_killed_features(trained):
    dictionary, _ = trained
    # Kill every dictionary feature that covers one of the first 16 true features.
    cover = (TRUE[:16] @ dictionary.directions().T).abs()
    killed = (cover > 0.8).any(0).nonzero().flatten()
    assert len(killed) >= 16
    b_enc = dictionary.b_enc.clone()
    b_enc[killed] = -1e4
    broken = Dictionary(dictionary.layer, dictionary.encoder.clone(), dictionary.decoder.clone(),
                        b_enc, dictionary.b_dec.clone(), dictionary.k, dictionary.scale)
    before = evaluate_dictionary(broken, synthetic(5, 16384))
    assert not before.fired[killed].any()

    kept, m_off = train_dictionary(synthetic(11, 100_000), D, init=broken, steps=400,
                                   lr=4e-3, resample_dead_every=0)
    revived, m_on = train_dictionary(synthetic(11, 100_000), D, init=broken, steps=400,
                                     lr=4e-3, resample_dead_every=100)
    assert m_on.history["resampled"] and m_on.history["resampled"][0][1] >= len(killed)
    off = evaluate_dictionary(kept, synthetic(5, 16384))
    on = evaluate_dictionary(revived, synthetic(5, 16384))
    print(f"killed {len(killed)}: without resampling {int((~off.fired[killed]).sum())} stay dead, "
          f"EV {off.explained_variance:.3f}; with resampling {int((~on.fired[killed]).sum())} "
          f"dead (dead fraction {on.dead_fraction:.3f}), EV {on.explained_variance:.3f}, resampled {m_on.history['resampled']}")
    assert not off.fired[killed].any()
    # (With 128 features for 64 true ones, spare live features re-cover the first 16 even
    # without resampling, so only the revival itself is checked, plus that nothing is lost.)
    found = best_cosines(revived.directions()[on.fired])
    assert (found >= 0.9).float().mean() >= 0.9
    assert on.explained_variance > 0.9
    assert on.fired[killed].float().mean() >= 0.9
    # a few features resampled late (step 200/300) may still be idle after 400 steps
    assert on.dead_fraction <= 0.1


def test_streams_a_million_rows_without_holding_them():
    alive = []  # weak references only: they do not keep batches alive
    peak = 0

    def generate():
        nonlocal peak
        g = torch.Generator().manual_seed(0)
        for _ in range(1_000_000 // 8192):
            on = torch.rand(8192, TRUE_FEATURES, generator=g) < 3 / TRUE_FEATURES
            batch = on.float() @ TRUE
            alive.append(weakref.ref(batch))
            peak = max(peak, sum(r() is not None for r in alive))
            yield batch

    rows = 8192 * (1_000_000 // 8192)
    dictionary, metrics = train_dictionary(generate(), D, features=64, k=4,
                                           resample_dead_every=0)
    # One pass over a one-shot generator: every batch was used once, at most a couple were ever
    # alive at the same time, and none is left.
    assert len(alive) == 1_000_000 // 8192 and rows >= 1_000_000 - 8192
    assert len(metrics.history["loss"]) == len(alive)
    assert peak <= 3
    assert all(r() is None for r in alive)
    assert metrics.rows <= 50 * 8192  # metrics from the last training batches, not all rows


def test_deterministic_with_seed():
    def run(seed):
        return train_dictionary(synthetic(2, 20_000, 256), D, features=64, k=4, steps=80,
                                seed=seed, resample_dead_every=40)[0]
    a, b, c = run(0), run(0), run(1)
    for name in ("encoder", "decoder", "b_enc", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.scale == b.scale
    assert not torch.equal(a.decoder, c.decoder)


def test_scale_normalisation_makes_training_unit_free():
    def run(factor):
        stream = synthetic(2, 20_000, 256)
        return train_dictionary(lambda: (b * factor for b in stream()), D, features=64, k=4,
                                steps=60, resample_dead_every=0)
    (a, ma), (b, mb) = run(1.0), run(1000.0)
    assert b.scale == pytest.approx(1000 * a.scale, rel=1e-5)
    assert torch.allclose(a.decoder, b.decoder, atol=1e-3)
    assert mb.explained_variance == pytest.approx(ma.explained_variance, abs=1e-3)
    x = next(iter(synthetic(9, 256, 256)()))
    assert torch.allclose(b.encode(1000 * x), a.encode(x), atol=1e-3)


def test_rejects_bad_input():
    with pytest.raises(OptionError):
        train_dictionary([torch.zeros(4, 5)], 3, features=8, k=2)
    with pytest.raises(OptionError):
        train_dictionary([], 3, features=8, k=2)
    with pytest.raises(OptionError):
        train_dictionary([torch.zeros(4, 3)], 3, features=8, k=9)
