"""benchmarks/transformer_ladder.py: the counted memory of SD3.5-medium and FLUX.1-dev ControlNet training rests on
counting fake tensors (shapes, no storage); on small models of the same classes the fake count equals the count of
the same steps run on real tensors, rung by rung (within 0.1 %: a few storages that real tensors share are counted
twice when fake)."""

import pytest

pytestmark = pytest.mark.not_colab(reason="the same torch in both venvs")

CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16,
            hidden_act="gelu")
T5 = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu",
          is_encoder_decoder=False)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
           norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           use_quant_conv=False, use_post_quant_conv=False)
SMALL = {
    "sd3": dict(family="sd3", name="small SD3", resolution=32, t5_length=8, clips=(CLIP, CLIP), t5=T5, vae=VAE,
                transformer=dict(sample_size=4, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                 caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8,
                                 dual_attention_layers=(0,), qk_norm="rms_norm"),
                controlnet=dict(num_layers=1)),
    "flux": dict(family="flux", name="small Flux", resolution=32, t5_length=8, clips=(CLIP,), t5=T5, vae=VAE,
                 transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                  guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
                 controlnet=dict(num_layers=1, num_single_layers=0)),
}


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # Flux's RMSNorm, bf16 on a CPU
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_fake_tensor_count_matches_the_count_of_real_tensors_on_every_rung(benchmark_script, family):
    ladder = benchmark_script("transformer_ladder")
    for number, _, settings in ladder.RUNGS:
        fake = ladder.count_rung(SMALL[family], settings, fake=True)
        real = ladder.count_rung(SMALL[family], settings, fake=False)
        assert real["peak_gb"] > 0 and real["breakdown_gb"]["optimizer state"] > 0, number
        assert fake["loaded_gb"] == pytest.approx(real["loaded_gb"], rel=1e-3), number
        assert fake["peak_gb"] == pytest.approx(real["peak_gb"], rel=1e-3), (number, fake, real)
        for category, gb in real["breakdown_gb"].items():
            assert fake["breakdown_gb"][category] == pytest.approx(gb, abs=1e-3 * real["peak_gb"]), (number, category)
