"""x̂0 and noise levels against closed forms, for every supported scheduler and prediction type."""

import pytest
import torch

from denoisefeat import schedulers as S

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _oracle_output(prediction_type, x0, eps, level):
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":  # v = α ε − σ x0 on the variance-preserving scale
        norm = (level.signal**2 + level.noise**2) ** 0.5
        return (level.signal * eps - level.noise * x0) / norm
    if prediction_type == "flow_prediction":
        return eps - x0
    raise AssertionError(prediction_type)


def _cases():
    for name in S.SCHEDULERS:
        if name == "flow-euler":
            yield name, "flow_prediction"
            continue
        for prediction in PREDICTIONS:
            yield name, prediction


@pytest.mark.parametrize(("name", "prediction_type"), list(_cases()))
def test_x0_recovers_the_clean_sample_at_every_step(name, prediction_type):
    """x_t = a·x0 + s·ε built from noise_level; the oracle output must give back x0 exactly."""
    config = {} if prediction_type == "flow_prediction" else {"prediction_type": prediction_type}
    scheduler = S.make_scheduler(name, base_config=config)
    scheduler.set_timesteps(8)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    kwargs = {"generator": torch.Generator().manual_seed(1)} if name in ("ddpm", "euler-ancestral") else {}
    for i, t in enumerate(scheduler.timesteps):
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        level = S.noise_level(scheduler, timestep=t, step_index=i)
        x_t = level.signal * x0 + level.noise * eps
        output = _oracle_output(prediction_type, x0, eps, level)
        derived = S.derive_original_sample(scheduler, model_output=output, sample=x_t, timestep=t, step_index=i)
        torch.testing.assert_close(derived, x0, rtol=1e-6, atol=1e-6)
        if name in ("dpm++", "unipc") and i > 0:  # the scheduler's own conversion (it has no pred_original_sample)
            own = scheduler.convert_model_output(output, sample=x_t)  # both predict x0 by default
            torch.testing.assert_close(own.to(x0.dtype), x0, rtol=1e-4, atol=1e-4)
        S.scale_model_input(scheduler, x_t, t)  # k-diffusion schedulers expect it before step
        try:
            step = scheduler.step(output, t, x_t, **kwargs)
        except (NotImplementedError, ValueError) as error:  # a scheduler refusing a prediction type
            pytest.skip(f"{name} does not support {prediction_type}: {error}")
        x0_used = S.predicted_original_sample(
            scheduler, step_output=step, model_output=output, sample=x_t, timestep=t, step_index=i
        )
        if name == "heun" and i % 2 == 1:
            continue  # Heun's second call reports x̂0 of its corrector stage, not of x_t
        # schedulers keep sigmas in float32: agreement to float32 precision of x_t (|x_t| up to ~15)
        torch.testing.assert_close(x0_used.to(x0.dtype), x0, rtol=1e-4, atol=1e-4)


def test_noise_level_matches_scheduler_forward_process():
    """add_noise / scale_noise of each family equals a·x0 + s·ε."""
    x0 = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    for name in ("ddim", "euler", "dpm++", "flow-euler"):
        scheduler = S.make_scheduler(name)
        scheduler.set_timesteps(10)
        i = 3
        t = scheduler.timesteps[i]
        level = S.noise_level(scheduler, timestep=t, step_index=i)
        if name == "flow-euler":
            noisy = scheduler.scale_noise(x0, t.reshape(1), eps)
        else:
            noisy = scheduler.add_noise(x0, eps, t.reshape(1))
        torch.testing.assert_close(noisy, level.signal * x0 + level.noise * eps, rtol=1e-5, atol=1e-5)
        assert 0 < level.alpha_bar < 1
        assert level.snr == pytest.approx(level.alpha_bar / (1 - level.alpha_bar))


def test_unknown_scheduler_lists_close_names():
    with pytest.raises(ValueError, match="Did you mean 'euler'"):
        S.make_scheduler("eulr")


def test_unsupported_scheduler_convention_is_refused():
    from diffusers import LCMScheduler

    with pytest.raises(ValueError, match="does not know how LCMScheduler"):
        S.sample_convention(LCMScheduler())


def test_clipping_carries_over_to_schedulers_that_threshold():
    """A DDIM config that clips x̂0 (pixel models) gives DPM-Solver/UniPC the same clip, and warns for Euler."""
    import warnings

    import pytest
    from diffusers import DDIMScheduler

    base = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, timestep_spacing="trailing").config
    for name in ("dpm++", "unipc"):
        scheduler = S.make_scheduler(name, base_config=base)
        assert scheduler.config.thresholding and scheduler.config.sample_max_value == 1.0
        x0 = torch.linspace(-5, 5, 3 * 8 * 8).reshape(1, 3, 8, 8)
        assert torch.equal(scheduler._threshold_sample(x0), x0.clamp(-1, 1))  # exactly the DDIM clip
    assert S.make_scheduler("ddpm", base_config=base).config.clip_sample
    with pytest.warns(UserWarning, match="cannot clip"):
        S.make_scheduler("euler", base_config=base)
    unclipped = DDIMScheduler(clip_sample=False).config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not S.make_scheduler("dpm++", base_config=unclipped).config.thresholding
