import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils
from flax.training import train_state

from cnhelpers.course.fill import fill_example
from cnhelpers.course.flax_training import (
    CompileCounter,
    create_train_state,
    device_rngs,
    make_train_step,
    numpy_batches,
    pmapped,
    replicate,
    shard_batch,
    unreplicate,
)


def test_two_simulated_devices_are_visible():
    assert jax.local_device_count() == 2


def test_a_batch_is_split_over_the_devices_and_an_uneven_one_is_refused():
    batch = {"x": np.zeros((8, 3)), "ids": np.zeros((8, 77), np.int32)}
    sharded = shard_batch(batch)
    assert sharded["x"].shape == (2, 4, 3) and sharded["ids"].shape == (2, 4, 77)
    assert shard_batch(batch, jax.local_devices()[:1])["x"].shape == (1, 8, 3)
    with pytest.raises(ValueError, match="multiple of 2"):
        shard_batch({"x": np.zeros((5, 3))})


def _toy():
    state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.ones((3, 2))}, tx=optax.adamw(1e-2))

    def step(state, batch, rng):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch["x"] @ p["w"]) ** 2))(state.params)
        grads = jax.lax.pmean(grads, "batch")
        return state.apply_gradients(grads=grads), jax.lax.pmean(loss, "batch"), jax.random.split(rng)[0]

    return state, step, {"x": np.ones((4, 3), np.float32)}


def _compiles_per_step(step, state, batch, rngs, steps=3):
    counts = []
    for _ in range(steps):
        with CompileCounter() as compiles:
            state, loss, rngs = step(state, batch, rngs)
            jax.block_until_ready(loss)
        counts.append(compiles.count)
    return counts


def test_a_pmapped_step_compiles_once_when_its_inputs_are_placed_like_its_outputs():
    state, step, batch = _toy()
    p_step = jax.pmap(step, axis_name="batch", donate_argnums=(0,))
    counts = _compiles_per_step(p_step, replicate(state), shard_batch(batch), device_rngs(jax.random.PRNGKey(0)))
    assert counts[0] >= 1 and counts[1:] == [0, 0]


def test_default_placement_compiles_the_pmapped_step_again_on_step_two():
    """The jax >= 0.8 trap the notebook explains; if this starts failing, jax fixed it: update notebook 05."""
    state, step, batch = _toy()  # a fresh step function: no compiled code is shared with the other tests
    p_step = jax.pmap(step, axis_name="batch", donate_argnums=(0,))
    rngs = jax.random.split(jax.random.PRNGKey(0), 2)
    counts = _compiles_per_step(p_step, jax_utils.replicate(state), shard_batch(batch), rngs)
    assert counts[1] >= 1 and counts[2] == 0


def test_train_step_on_two_devices_trains_the_controlnet_and_leaves_the_unet_alone(flax_base, fresh_controlnet):
    base = flax_base
    controlnet, params, _ = fresh_controlnet
    state = create_train_state(controlnet, params, learning_rate=1e-3)
    frozen = {"unet": base["unet_params"], "vae": base["vae_params"], "text_encoder": base["text_encoder"].params}
    train_step = make_train_step(controlnet, base["unet"], base["vae"], base["text_encoder"], base["scheduler"],
                                 base["scheduler_state"], snr_gamma=5.0)
    rows = [fill_example(0, i, 64) for i in range(4)]
    batch = next(numpy_batches(rows, base["tokenizer"], resolution=64, batch_size=4))
    step = pmapped(train_step)
    r_state, r_frozen, rngs = replicate(state), replicate(frozen), device_rngs(jax.random.PRNGKey(1))
    r_state, metrics, rngs = step(r_state, r_frozen, shard_batch(batch), rngs)
    with CompileCounter() as compiles:
        r_state, metrics, rngs = step(r_state, r_frozen, shard_batch(batch), rngs)
        jax.block_until_ready(metrics)
    assert compiles.count == 0
    loss = np.asarray(metrics["loss"])
    assert loss.shape == (2,) and np.isfinite(loss).all() and loss[0] == loss[1]  # pmean: the same on each device
    trained = unreplicate(r_state.params)
    assert int(unreplicate(r_state.step)) == 2
    assert not np.allclose(trained["controlnet_mid_block"]["kernel"], params["controlnet_mid_block"]["kernel"])
    np.testing.assert_array_equal(unreplicate(r_frozen["unet"])["mid_block"]["resnets_0"]["conv1"]["kernel"],
                                  base["unet_params"]["mid_block"]["resnets_0"]["conv1"]["kernel"])
