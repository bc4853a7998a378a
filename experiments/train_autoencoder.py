"""Train a latent-diffusion autoencoder: ``python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f4.py --workdir runs/ae_kl_f4``.

KL-reg or VQ-reg (``first_stage.kind``) with downsampling f (``first_stage.factor``), as Rombach et
al. 2022's first stage; no perceptual loss (LPIPS weights cannot be downloaded here). It writes
checkpoints, ``metrics.jsonl`` and TensorBoard logs like ``experiments.train``, and at each grid step
a PNG of held-out originals over their reconstructions in ``<workdir>/reconstructions`` with the
PSNR and reconstruction FID in ``<workdir>/reconstruction.json``. Rerunning the command resumes.
"""
from absl import flags, logging

from experiments import cli

cli.define_training_flags("reconstructions", "Autoencoder config file.")
flags.DEFINE_string("classifier_weights", None,
                    "The rFID's feature classifier for 28×28 data, a trained classifier.msgpack "
                    "(default: the embedded MNIST one).")
flags.DEFINE_string("inception_weights", None,
                    "pytorch-fid's pt_inception-2015-12-05 weights: the rFID of data other than 28×28×1.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    import jax
    from experiments.latent import autoencoder_loop
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, hosts: {jax.process_count()}")
    autoencoder_loop.train_autoencoder(FLAGS.config, FLAGS.workdir, fall_back=FLAGS.fall_back_to_good_checkpoint,
                                          classifier_weights=FLAGS.classifier_weights,
                                          inception_weights=FLAGS.inception_weights)


if __name__ == "__main__":
    cli.run(main)
