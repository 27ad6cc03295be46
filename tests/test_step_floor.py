"""benchmarks/step_floor.py, the models' own arithmetic timed alone: it runs the step's forward, backward and
update on the course's models, and train_throughput.py hands it the flags that change those models' kernels."""

import pytest

pytestmark = pytest.mark.not_colab(reason="a benchmark of torch arithmetic: the same torch in both venvs")


def test_the_floor_times_forward_backward_and_update_and_every_controlnet_weight_gets_a_gradient(
        benchmark_script, tiny_base, fill_dir):
    import torch

    floor = benchmark_script("step_floor").measure_floor(torch.get_num_threads(), steps=1, repeats=1, warmup=1,
                                                         base=tiny_base, data=fill_dir)
    assert floor["models_s_per_step"] > 0 and floor["adamw_s_per_step"] > 0
    assert floor["floor_s_per_step"] == floor["models_s_per_step"] + floor["adamw_s_per_step"]
    assert floor["controlnet_params_with_grad"] == floor["controlnet_params"] > 100  # the backward reached them all


def test_the_floor_gets_each_rows_compile_and_layout_flags_and_nothing_else(benchmark_script):
    floor_flags = benchmark_script("train_throughput").floor_flags
    assert floor_flags([]) == ()
    assert floor_flags(["--torch_compile", "--channels_last", "--snr_gamma", "5"]) == (
        "--torch_compile", "inductor", "--channels_last")
    assert floor_flags(["--torch_compile", "aot_eager"]) == ("--torch_compile", "aot_eager")
    assert floor_flags(["--torch_compile"]) == ("--torch_compile", "inductor")
