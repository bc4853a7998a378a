"""Train a diffusion model: ``python -m experiments.train --config configs/mnist.py --workdir runs/mnist``.

Any config field can be overridden (``--config.optim.lr=1e-4``); rerunning the same command
resumes from the latest checkpoint in ``<workdir>/checkpoints``.
"""
from absl import flags, logging

from experiments import cli

cli.define_training_flags("samples", "Experiment config file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    import jax
    from experiments import loop
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, hosts: {jax.process_count()}")
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, fall_back=FLAGS.fall_back_to_good_checkpoint)


if __name__ == "__main__":
    cli.run(main)
