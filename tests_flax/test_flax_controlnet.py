import jax.numpy as jnp
from flax.core import unfreeze

from cnhelpers.course.flax_training import count_params, parameter_groups, shares_buffers


def test_every_block_the_controlnet_shares_with_a_two_block_unet_is_copied(flax_base, fresh_controlnet):
    unet_params = flax_base["unet_params"]
    _, params, copied = fresh_controlnet
    assert set(copied) == {"conv_in", "time_embedding", "down_blocks_0", "down_blocks_1", "mid_block"}
    kinds = {block: kind for block, kind, _ in parameter_groups(unet_params, params)}
    assert {kinds[block] for block in copied} == {"copied"}
    assert kinds["controlnet_mid_block"] == "new_zero"
    assert {kinds[b] for b in kinds if b.startswith("controlnet_down_blocks")} == {"new_zero"}
    assert kinds["controlnet_cond_embedding"] == "new"
    assert {kinds[b] for b in kinds if b.startswith("up_blocks")} == {"unet_only"}
    assert copied["mid_block"] == count_params(unet_params["mid_block"])


def test_copied_blocks_are_new_buffers_not_the_unets(flax_base, fresh_controlnet):
    unet_params = flax_base["unet_params"]
    _, params, _ = fresh_controlnet
    assert not shares_buffers(params, unet_params)
    naive = unfreeze(params)
    naive["mid_block"] = unet_params["mid_block"]  # what a plain assignment does
    assert shares_buffers(naive, unet_params)


def test_the_controlnet_starts_with_no_effect_on_the_unet(fresh_controlnet):
    controlnet, params, _ = fresh_controlnet
    latents, text = jnp.ones((1, 4, 8, 8)), jnp.ones((1, 3, 64))
    down, mid = controlnet.apply({"params": params}, latents, jnp.array([10]), text, jnp.ones((1, 3, 64, 64)),
                                 return_dict=False)
    assert all(not jnp.any(residual) for residual in [*down, mid])
