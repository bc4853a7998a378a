"""What the code promises not to recompile: a compiled guided sampler takes the guidance scale as an
input, so a new scale reuses the program (README, "Composing the functions")."""

import chex
import jax
import jax.numpy as jnp

from diffusion import guidance, samplers, schedules


def test_a_new_guidance_scale_reuses_the_compiled_sampler():
    schedule = schedules.make_schedule("linear", 50)
    means = jnp.array([[-1.0, 0.5], [1.0, -0.5], [0.0, 0.0]])     # class 2 is the null label's row

    @chex.assert_max_traces(n=1)
    def model_fn(x_t, timesteps, labels):
        """A stand-in ε-network: ε of data concentrated at the class mean (trace-counted)."""
        a = schedule.alphas_cumprod[timesteps][:, None]
        return (x_t - jnp.sqrt(a) * means[labels]) / jnp.sqrt(1 - a)

    guided = guidance.classifier_free(model_fn, null_label=2)
    draw = jax.jit(lambda x_T, key, labels, scale: samplers.sample(
        samplers.ddim_step, guided, schedule, x_T, key, timesteps=samplers.spaced(schedule, 10),
        cond={"labels": labels, "guidance_scale": scale}))
    x_T, labels = jax.random.normal(jax.random.key(0), (4, 2)), jnp.array([0, 1, 0, 1])
    outs = [draw(x_T, jax.random.key(1), labels, jnp.float32(w)) for w in (0.0, 1.0, 3.0)]
    assert draw._cache_size() == 1
    assert not jnp.allclose(outs[0], outs[2])      # the scale reached the program as an input
    chex.clear_trace_counter()
