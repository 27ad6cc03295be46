"""Self-checks for the notebooks' exercises: each returns True or False and prints why.

An exercise ships unanswered (``my_answer = None``): its check then prints a hint instead of failing, and an
answer of the wrong form (a number where a tuple belongs, a function that raises) is a hint too, never an
error, so Run All stays clean. The solutions sit in a collapsed cell below each exercise;
``tests/test_exercises.py`` proves each check accepts them and rejects typical wrong answers.
"""

from __future__ import annotations

import functools
import math

from ..data import conditioning_image_transforms
from ..losses import min_snr_weights


def verdict(correct: bool, right: str, wrong: str) -> bool:
    """Print a clear message for a right or a wrong answer, and return whether it was right.

    Every notebook's checks; notebook 02 calls it directly.
    """
    print(("✅ Correct. " + right) if correct else ("❌ Not yet. " + wrong))
    return bool(correct)


class Unanswered(Exception):
    """Raised inside a check when the learner's function returns None: its body is still to be written.

    Every notebook's code exercises.
    """


def answered(value):
    """``value``, or :class:`Unanswered` when it is None (what an exercise's unwritten function returns).

    Every notebook's code exercises.
    """
    if value is None:
        raise Unanswered
    return value


def exercise(answers: int = 1, hint: str = ""):
    """Make a check forgiving: its first ``answers`` arguments are the learner's. Any of them None prints
    "not answered yet" and ``hint``; an answer the check cannot even compare (TypeError, ValueError) prints what
    form it should have. Either way the check returns False instead of raising.

    Every notebook's checks.
    """
    def decorate(check):
        @functools.wraps(check)
        def forgiving(*args, **kwargs):
            if any(answer is None for answer in args[:answers]):
                print("✏️ Not answered yet: replace each None in the cell above with your answer, then run it again."
                      + (f" Hint: {hint}" if hint else ""))
                return False
            try:
                return check(*args, **kwargs)
            except Unanswered:
                print("✏️ Not answered yet: your function still returns None; write its body, then run the cell "
                      "again." + (f" Hint: {hint}" if hint else ""))
                return False
            except Exception as error:  # a learner's answer (or function) of the wrong form: a hint, not a traceback
                return verdict(False, "", f"The check could not use your answer ({type(error).__name__}: {error})."
                               + (f" Hint: {hint}" if hint else ""))
        return forgiving
    return decorate


# --- notebook 00: setup --------------------------------------------------------------------------------------------


@exercise(answers=1, hint='the VAE shrinks each side by its factor, into its latent channels: (channels, height, width).')
def check_latent_shape(answer, resolution: int = 64, latent_channels: int = 4, vae_scale_factor: int = 8) -> bool:
    """Exercise: the shape of one image's latents, as a tuple (channels, height, width).

    Notebook 00.
    """
    expected = (latent_channels, resolution // vae_scale_factor, resolution // vae_scale_factor)
    return verdict(
        tuple(answer) == expected,
        f"A {resolution} px image becomes {expected}: the VAE shrinks each side {vae_scale_factor}x "
        f"into {latent_channels} channels.",
        f"You answered {tuple(answer)}. Divide the side by the VAE factor ({vae_scale_factor}) and remember the "
        "latent channels.",
    )


# --- notebook 01: dataset transforms -------------------------------------------------------------------------------


@exercise(answers=3, hint='follow the photo through the transforms shown above, one at a time: Resize(n) scales the '
          'SHORT side to n, CenterCrop(n) keeps an n x n square, ToTensor gives [0, 1] with channels first, and only '
          'the target then goes through Normalize([0.5], [0.5]), which computes (x - 0.5) / 0.5.')
def check_transform_answer(pixel_values_shape, pixel_values_range, conditioning_range, resolution: int = 512) -> bool:
    """Exercise: a 768 x 512 (width x height) photo goes through the training transforms at
    ``resolution``. Give the shape of its ``pixel_values`` tensor, and the (min, max) value range of
    ``pixel_values`` and of ``conditioning_pixel_values``.

    Notebook 01.
    """
    shape_ok = tuple(pixel_values_shape) == (3, resolution, resolution)
    pixel_ok = tuple(pixel_values_range) == (-1, 1)
    conditioning_ok = tuple(conditioning_range) == (0, 1)
    hints = []
    if not shape_ok:
        hints.append(f"shape {tuple(pixel_values_shape)}: Resize({resolution}) scales the SHORT side to {resolution} "
                     f"(768 x 512 -> {768 * resolution // 512} x {resolution}), then CenterCrop({resolution}) keeps "
                     "a square; ToTensor puts channels first")
    if not pixel_ok:
        hints.append(f"pixel_values range {tuple(pixel_values_range)}: Normalize([0.5], [0.5]) maps [0, 1] to ...?")
    if not conditioning_ok:
        hints.append(f"conditioning range {tuple(conditioning_range)}: the conditioning transform has no Normalize")
    return verdict(
        shape_ok and pixel_ok and conditioning_ok,
        f"The crop gives (3, {resolution}, {resolution}); targets are in [-1, 1] for the VAE, conditioning images "
        "stay in [0, 1].",
        "; ".join(hints) + ".",
    )


@exercise(hint="resize the short side to resolution, center-crop a square, to a tensor in [0, 1] (no Normalize).")
def check_conditioning_transform(fn, resolution: int = 64) -> bool:
    """Exercise: ``fn(image, resolution)`` turns a PIL conditioning image of any size into the tensor
    the ControlNet is fed: (3, resolution, resolution), values in [0, 1], the same geometry as the target image.

    Notebook 01.
    """
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    for width, height in ((3 * resolution // 2, resolution), (resolution, 2 * resolution), (2 * resolution,) * 2):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = conditioning_image_transforms(resolution)(image)
        got = torch.as_tensor(answered(fn(image, resolution)), dtype=torch.float32)
        if tuple(got.shape) != tuple(expected.shape):
            return verdict(False, "", f"A {width} x {height} image gives shape {tuple(got.shape)}, not "
                           f"{tuple(expected.shape)}: resize the short side to {resolution}, center-crop, channels first.")
        if got.min() < -1e-6 or got.max() > 1 + 1e-6:
            return verdict(False, "", f"Your values run from {float(got.min()):.2f} to {float(got.max()):.2f}: the "
                           "conditioning image stays in [0, 1] (Normalize is for the target image only).")
        if (got - expected).abs().mean() > 0.02:
            return verdict(False, "", f"A {width} x {height} image comes out different from the course's transform "
                           "(mean difference {:.3f}): center-crop after resizing, so the outline stays where the "
                           "target's circle is.".format(float((got - expected).abs().mean())))
    return verdict(True, "Same geometry as the target image's transform, values in [0, 1]: the outline lines up "
                   "with the circle it describes.", "")


# --- notebook 02: a ControlNet from the UNet -----------------------------------------------------------------------


@exercise(answers=2, hint='count the stride-2 convolutions: one per entry after the first.')
def check_conditioning_size(downsampling, conditioning_side, conditioning_embedding_out_channels=(16, 32, 64, 128, 256),
                            latent_side: int = 64) -> bool:
    """Exercise: for a ControlNet with these ``conditioning_embedding_out_channels``, how many
    times does the conditioning embedding shrink the conditioning image, and what side (in pixels) must the
    conditioning image have so that its embedding matches ``latent_side`` x ``latent_side`` latents?

    Notebook 02.
    """
    expected_factor = 2 ** (len(conditioning_embedding_out_channels) - 1)
    expected_side = latent_side * expected_factor
    factor_ok, side_ok = downsampling == expected_factor, conditioning_side == expected_side
    hints = []
    if not factor_ok:
        hints.append(f"downsampling {downsampling}: each entry after the first adds one stride-2 convolution "
                     f"({len(conditioning_embedding_out_channels)} entries)")
    if not side_ok:
        hints.append(f"side {conditioning_side}: the embedding is the image side divided by the downsampling, and it "
                     f"must equal {latent_side}")
    return verdict(
        factor_ok and side_ok,
        f"{len(conditioning_embedding_out_channels)} entries give {len(conditioning_embedding_out_channels) - 1} "
        f"stride-2 convolutions, {expected_factor}x; {expected_side} px / {expected_factor} = {latent_side}. With "
        "SD's 8x VAE, that ControlNet would need 1024 px conditioning images for 512 px training images, "
        "which is why it must shrink exactly as much as the VAE.",
        "; ".join(hints) + ".",
    )


# --- notebook 03: the training loop --------------------------------------------------------------------------------


@exercise(answers=1, hint='SNR(t) = alphas_cumprod[t] / (1 - alphas_cumprod[t]); the weight is min(SNR, γ) / SNR.')
def check_min_snr_weight(answer: float, noise_scheduler, timestep: int, snr_gamma: float) -> bool:
    """Exercise: the Min-SNR weight of one timestep, for the scheduler's prediction type.

    Notebook 03 (a number-answer form of its Min-SNR exercise; the notebook asks for the function:
    :func:`check_min_snr_weights_function`).
    """
    import torch

    expected = float(min_snr_weights(noise_scheduler, torch.tensor([timestep]), snr_gamma)[0])
    return verdict(
        abs(float(answer) - expected) <= 1e-3 * max(1.0, abs(expected)),
        f"The weight at t={timestep} is {expected:.4f}.",
        f"You answered {float(answer):.4f}. Compute SNR(t) = ᾱ_t / (1 - ᾱ_t) from "
        "noise_scheduler.alphas_cumprod[t], then min(SNR, γ) / SNR for epsilon (or / (SNR + 1) for v-prediction).",
    )


@exercise(hint="SNR = alphas_cumprod[t] / (1 - alphas_cumprod[t]); clamp it at γ; divide by SNR (epsilon) or "
               "by SNR + 1 (v_prediction).")
def check_min_snr_weights_function(fn) -> bool:
    """Exercise: ``fn(alphas_cumprod, timesteps, gamma, prediction_type)`` returns the Min-SNR-γ
    weight of each timestep, as diffusers' training scripts compute it, for epsilon and v-prediction.

    Notebook 03.
    """
    import torch
    from diffusers import DDPMScheduler

    timesteps = torch.tensor([0, 1, 10, 50, 200, 500, 999])
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type=prediction_type)
        for gamma in (1.0, 5.0):
            expected = min_snr_weights(scheduler, timesteps, gamma)
            got = torch.as_tensor(answered(fn(scheduler.alphas_cumprod, timesteps, gamma, prediction_type)),
                                  dtype=torch.float32)
            if got.shape != expected.shape:
                return verdict(False, "", f"For {len(timesteps)} timesteps your function returns shape "
                               f"{tuple(got.shape)}: give one weight per timestep, shape ({len(timesteps)},).")
            if not torch.allclose(got, expected, rtol=1e-3, atol=1e-6):
                worst = int((got - expected).abs().argmax())
                return verdict(False, "", f"With {prediction_type} and γ = {gamma:g}, at t = {int(timesteps[worst])} "
                               f"your weight is {float(got[worst]):.4g} where Min-SNR gives {float(expected[worst]):.4g}. "
                               "Clamp the SNR at γ (min(SNR, γ)), then divide by SNR for epsilon, by SNR + 1 for "
                               "v_prediction.")
    return verdict(True, "Your weights equal diffusers' compute_snr-based Min-SNR weights for both prediction types: "
                   "easy, low-noise timesteps (large SNR) get weights far below 1.", "")


# --- notebook 04: memory tricks ------------------------------------------------------------------------------------


@exercise(answers=2, hint='AdamW keeps two moments per parameter.')
def check_optimizer_state_gb(fp32_adam_gb: float, adam_8bit_gb: float, controlnet_params: int) -> bool:
    """Exercise: the ControlNet's AdamW state in GB, with fp32 moments and with 8-bit ones.

    Notebook 04.
    """
    expected = (controlnet_params * 8 / 1e9, controlnet_params * 2 / 1e9)
    close = all(abs(a - e) <= 0.02 * e for a, e in zip((fp32_adam_gb, adam_8bit_gb), expected))
    return verdict(
        close,
        f"AdamW keeps two moments per parameter: {expected[0]:.2f} GB in fp32, {expected[1]:.2f} GB in 8 bits.",
        f"You answered {fp32_adam_gb:.2f} and {adam_8bit_gb:.2f} GB. AdamW stores two moments per parameter: "
        "4 bytes each in fp32, 1 byte each in 8-bit AdamW. Multiply by the parameter count, divide by 1e9.",
    )


@exercise(answers=2, hint='fp32: 4 bytes a value; the usual step keeps every gradient, the step in backward one.')
def check_live_gradients_mb(usual_mb: float, in_backward_mb: float, parameter_numels: list[int]) -> bool:
    """Exercise: the most fp32 gradient MB alive at once, with the usual step and with the step
    in backward, for parameters of ``parameter_numels`` values each.

    Notebook 04.
    """
    expected = (sum(parameter_numels) * 4 / 1e6, max(parameter_numels) * 4 / 1e6)
    close = all(abs(a - e) <= 0.01 * e for a, e in zip((usual_mb, in_backward_mb), expected))
    return verdict(
        close,
        f"The usual step holds every gradient at the end of backward: {expected[0]:.1f} MB. The step in backward "
        f"frees each one as soon as it is used, so at most the largest is alive: {expected[1]:.1f} MB.",
        f"You answered {usual_mb:.1f} and {in_backward_mb:.1f} MB. An fp32 gradient takes 4 bytes a value: the "
        "usual step keeps them all (sum the sizes); the step in backward one at a time (the largest).",
    )


# --- notebook 04b: measuring memory --------------------------------------------------------------------------------


@exercise(answers=1, hint='MFU = FLOPs per sample x samples per second / the peak FLOP/s.')
def check_mfu(answer, flops_per_sample: float, samples_per_s: float, peak_flops_per_s: float) -> bool:
    """Exercise: the model FLOPs utilisation of a run, as a fraction (0.5 for 50 %).

    Notebook 04b.
    """
    expected = flops_per_sample * samples_per_s / peak_flops_per_s
    return verdict(
        abs(answer - expected) <= 0.01 * expected,
        f"{flops_per_sample / 1e12:.3f} TFLOP x {samples_per_s:.1f} samples/s / {peak_flops_per_s / 1e12:.0f} TFLOP/s "
        f"= {expected:.3f}: the chip spends {expected:.0%} of its peak on the step's counted work.",
        f"You answered {answer:.4g}. The work done per second is FLOPs per sample times samples per second; "
        "divide it by the chip's peak FLOP/s (and keep it a fraction: 0.5, not 50).",
    )


# --- notebook 05: Flax on TPUs -------------------------------------------------------------------------------------


@exercise(answers=1, hint="reduce each sample's squared error to one number, then weight it.")
def check_min_snr_loss(loss_fn) -> bool:
    """Exercise: ``loss_fn(prediction, target, weights)`` weights each sample's error once.

    ``prediction`` and ``target`` are (B, C, H, W), ``weights`` is (B,); the answer must equal the mean
    over samples of ``weights[i] * mean((prediction[i] - target[i]) ** 2)``. It is tried where the
    latent width equals the batch (where a plain ``(B, C, H, W) * (B,)`` broadcast runs but weights
    columns instead of samples) and where it does not (where that broadcast fails).

    Notebook 05.
    """
    import numpy as np

    rng = np.random.default_rng(5)
    for batch, width in ((8, 8), (4, 8), (2, 64)):
        prediction = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
        target = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
        weights = rng.uniform(0.05, 1.0, batch).astype(np.float32)
        expected = float(np.mean(weights * ((prediction - target) ** 2).mean(axis=(1, 2, 3))))
        try:
            got = float(np.asarray(answered(loss_fn(prediction, target, weights))))
        except Unanswered:
            raise
        except Exception as error:
            return verdict(False, "", f"With a batch of {batch} and latents {width} wide your function raised "
                           f"{type(error).__name__}: {error}. Reduce each sample's error to one number before "
                           "weighting it, or give the weights shape (B, 1, 1, 1).")
        if not np.isclose(got, expected, rtol=1e-4, atol=1e-6):
            return verdict(False, "", f"With a batch of {batch} and latents {width} wide you get {got:.5f}, but "
                           f"weighting each sample gives {expected:.5f}. A (B, C, H, W) * (B,) product lines the "
                           "weights up with the last axis (width), not with the samples.")
    return verdict(True, "Each sample's mean error is weighted by its own Min-SNR weight, for any batch size "
                   "and latent size.", "")


# --- notebook 06: inference and control fidelity -------------------------------------------------------------------


@exercise(answers=1, hint='make two boolean masks on a fine grid (y, x = np.mgrid[0:400, 0:400]; a disc is '
                            '(x - cx)**2 + (y - cy)**2 <= r**2 with r = 100), the second centred r further along x, and '
                            'pass both to mask_iou; or on paper, the lens two discs share, centres d apart, has area '
                            '2r²·acos(d/2r) − (d/2)·√(4r² − d²), and the union is both discs minus that lens.')
def check_shifted_disc_iou(answer: float) -> bool:
    """Exercise: the IoU of two equal discs whose centres are one radius apart.

    Notebook 06.
    """
    import math

    # The lens two discs of radius r share, centres d apart: 2r²·acos(d/2r) − (d/2)·√(4r² − d²); here d = r.
    lens = 2 * math.acos(0.5) - 0.5 * math.sqrt(3)  # in units of r²
    expected = lens / (2 * math.pi - lens)
    return verdict(
        abs(float(answer) - expected) <= 0.01,
        f"The IoU is {expected:.3f}: a circle of the right size, one radius off, keeps only about a quarter of "
        "the score. IoU punishes misplacement hard, which is why it measures control.",
        f"You answered {float(answer):.3f}. Intersection: the lens the two discs share; union: both areas minus "
        "the lens. With pixel masks, make the discs large (r = 100 px) and shift one by exactly r.",
    )


# --- notebook 07: SDXL ---------------------------------------------------------------------------------------------


@exercise(answers=1, hint='the pooled text, then 6 numbers each embedded in addition_time_embed_dim.')
def check_sdxl_added_embedding_width(answer, pooled_dim: int = 1280, addition_time_embed_dim: int = 256) -> bool:
    """Exercise: the width of the vector SDXL's UNet adds to its timestep embedding
    (``projection_class_embeddings_input_dim``), for a pooled text embedding of ``pooled_dim`` numbers and
    ``add_time_ids`` whose six numbers are each embedded into ``addition_time_embed_dim`` (SDXL: 1280, 256).

    Notebook 07.
    """
    expected = pooled_dim + 6 * addition_time_embed_dim
    return verdict(
        int(answer) == expected,
        f"{pooled_dim} (pooled text) + 6 x {addition_time_embed_dim} (original size, crop corner, target size, "
        f"each number embedded) = {expected}.",
        f"You answered {answer}. The UNet concatenates the pooled text embedding ({pooled_dim} numbers) with "
        f"the sinusoidal embedding of each of the 6 add_time_ids ({addition_time_embed_dim} numbers each).",
    )


# --- notebook 08: ControlNet on a diffusion transformer ------------------------------------------------------------


@exercise(answers=2, hint="SD3's transformer divides (blocks / residuals, a fraction) and rounds the quotient down; "
                          "Flux's rounds the interval up first (ceil), then divides with //.")
def check_residual_index(sd3_answer, flux_answer, num_blocks: int = 24, num_residuals: int = 7,
                         block: int = 22) -> bool:
    """Exercise: which ControlNet residual the transformer's block ``block`` (counted from 0) adds, of
    ``num_residuals``, in a transformer of ``num_blocks`` blocks: by SD3's rule (``int(block / (blocks /
    residuals))``, diffusers' ``SD3Transformer2DModel``) and by Flux's (``block // ceil(blocks / residuals)``,
    ``FluxTransformer2DModel``).

    Notebook 08.
    """
    sd3 = int(block / (num_blocks / num_residuals))
    flux = block // math.ceil(num_blocks / num_residuals)
    last = (num_blocks - 1) // math.ceil(num_blocks / num_residuals)
    right = (int(sd3_answer), int(flux_answer)) == (sd3, flux)
    return verdict(
        right,
        f"SD3: int({block} / ({num_blocks}/{num_residuals})) = {sd3}; Flux: {block} // ceil({num_blocks}/"
        f"{num_residuals}) = {block} // {math.ceil(num_blocks / num_residuals)} = {flux}. Under Flux's rule even "
        f"the last block gets residual {last}: {num_residuals - 1 - last} residual(s) reach no block.",
        f"You answered SD3 {sd3_answer}, Flux {flux_answer}. SD3 spreads the residuals evenly (the interval "
        f"{num_blocks}/{num_residuals} is a fraction); Flux rounds the interval up to a whole number of blocks.",
    )


# --- notebook 09: your own ControlNet ------------------------------------------------------------------------------

#: The words a knob prediction takes, and how far apart two scores must be to count as higher or lower.
KNOB_PREDICTIONS = ("higher", "lower", "about the same")
KNOB_TOLERANCE = 0.05


def knob_outcome(baseline: float, changed: float, tolerance: float = KNOB_TOLERANCE) -> str:
    """``higher``, ``lower`` or ``about the same``: the changed run's last score against the baseline's.

    Notebook 09.
    """
    if changed > baseline + tolerance:
        return "higher"
    if changed < baseline - tolerance:
        return "lower"
    return "about the same"


@exercise(answers=1, hint='predict before you run: "higher", "lower" or "about the same" than the run above, and set '
                          'MY_KNOB to one flag and its new value, e.g. ("learning_rate", 2e-4).')
def check_knob_prediction(prediction, baseline: float, changed: float, tolerance: float = KNOB_TOLERANCE) -> bool:
    """Whether ``prediction`` (one of :data:`KNOB_PREDICTIONS`) says how the changed run's last consistency score
    ``changed`` compares with the baseline run's ``baseline`` (within ``tolerance`` is "about the same").

    Notebook 09.
    """
    if prediction not in KNOB_PREDICTIONS:
        raise ValueError(f"say one of {', '.join(map(repr, KNOB_PREDICTIONS))}, not {prediction!r}")
    outcome = knob_outcome(baseline, changed, tolerance)
    measured = f"the run above ended at {baseline:.2f}, yours at {changed:.2f}: {outcome}"
    return verdict(prediction == outcome, f"As measured, {measured}.",
                   f"You predicted {prediction!r}, but {measured}. Why? Think about how far each step "
                   "moves the zero convolutions, and how many steps the run had.")


#: Two conditions whose final IoUs are closer than this count as tied in :func:`check_condition_ranking`.
RANKING_TIE = 0.05


def final_scores(rows: list[dict]) -> dict[str, float]:
    """Each condition's IoU at its last checkpoint, from the rows of a ``benchmarks/condition_types.py`` result.

    Notebook 09.
    """
    return {row["condition"]: row["iou"][-1] for row in rows}


@exercise(answers=1, hint='list the six condition types from the one that controls the circle best to the worst, as '
                          'strings: "outline", "mask", "depth", "scribble", "keypoints", "canny".')
def check_condition_ranking(ranking, scores: dict[str, float], tie: float = RANKING_TIE) -> bool:
    """Whether ``ranking`` (condition names, best first) agrees with the measured final ``scores``: no condition is
    placed above one that scored more than ``tie`` higher.

    Notebook 09.
    """
    ranking = list(ranking)
    if sorted(ranking) != sorted(scores):
        raise ValueError(f"rank each of {', '.join(sorted(scores))} exactly once")
    wrong = [(a, b) for i, a in enumerate(ranking) for b in ranking[i + 1:] if scores[b] > scores[a] + tie]
    if not wrong:
        measured = sorted(scores, key=scores.get, reverse=True)
        return verdict(True, f"The measured order is {', '.join(measured)}: read why below.", "")
    above, below = wrong[0]
    return verdict(False, "", f"{len(wrong)} pairs are the wrong way round, for instance {above!r} above {below!r}: "
                              "think about how much of the circle each condition pins down, and try again.")
