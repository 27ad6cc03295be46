import jax.numpy as jnp
import numpy as np
import pytest

from cnhelpers.course.flax_training import compute_snr, min_snr_weights, per_sample_mse


def _alphas_cumprod():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2  # SD's scaled_linear schedule
    return jnp.asarray(np.cumprod(1 - betas))


def test_snr_is_alpha_bar_over_one_minus_alpha_bar_and_falls_with_the_timestep():
    alphas_cumprod = _alphas_cumprod()
    timesteps = jnp.array([0, 250, 999])
    snr = compute_snr(alphas_cumprod, timesteps)
    expected = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    np.testing.assert_allclose(snr, expected, rtol=1e-6)
    assert snr[0] > snr[1] > snr[2]


def test_min_snr_weights_cap_low_noise_steps_for_epsilon_and_v_prediction():
    snr = jnp.array([0.5, 5.0, 50.0])
    np.testing.assert_allclose(min_snr_weights(snr, 5.0, "epsilon"), [1.0, 1.0, 0.1], rtol=1e-6)
    np.testing.assert_allclose(min_snr_weights(snr, 5.0, "v_prediction"), [0.5 / 1.5, 5 / 6, 5 / 51], rtol=1e-6)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(snr, 5.0, "sample")


def _batch(batch, width, seed=0):
    rng = np.random.default_rng(seed)
    prediction = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
    target = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, batch).astype(np.float32)
    return prediction, target, weights


def test_per_sample_weighting_equals_weighting_each_sample_in_a_loop():
    prediction, target, weights = _batch(8, 8)
    loop = np.mean([w * np.mean((p - t) ** 2) for p, t, w in zip(prediction, target, weights)])
    np.testing.assert_allclose(jnp.mean(per_sample_mse(prediction, target) * weights), loop, rtol=1e-5)


def test_upstream_broadcast_silently_weights_columns_when_the_width_equals_the_batch():
    prediction, target, weights = _batch(8, 8)
    upstream = jnp.mean((target - prediction) ** 2 * weights)  # (B, C, H, W) * (B,): W lines up with B
    correct = jnp.mean(per_sample_mse(prediction, target) * weights)
    assert not np.isclose(upstream, correct, rtol=1e-3)


def test_upstream_broadcast_fails_when_the_width_differs_from_the_batch():
    prediction, target, weights = _batch(4, 8)
    with pytest.raises((TypeError, ValueError), match="[Ii]ncompatible shapes"):
        jnp.mean((jnp.asarray(target) - prediction) ** 2 * weights)


def test_the_exercise_check_accepts_per_sample_weighting_and_rejects_the_upstream_broadcast(capsys):
    from cnhelpers.course.checks import check_min_snr_loss

    assert check_min_snr_loss(lambda p, t, w: jnp.mean(per_sample_mse(p, t) * w))
    assert check_min_snr_loss(lambda p, t, w: jnp.mean((p - t) ** 2 * w[:, None, None, None]))
    assert not check_min_snr_loss(lambda p, t, w: jnp.mean((t - p) ** 2 * w))
    assert "Not yet" in capsys.readouterr().out
