"""Train a classifier: ``python -m experiments.train_classifier --config configs/classifier_mnist.py --workdir runs/classifier``.

``classifier.kind='cnn'`` trains the feature classifier that FID and the Inception Score use for
28×28 data; ``'noisy'`` trains ADM's noisy classifier for classifier guidance. Both report the
held-out accuracy and write the EMA weights to ``<workdir>/classifier.msgpack``; a rerun resumes.
"""
from absl import flags, logging
from ml_collections import config_flags

from experiments import cli

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the trained weights.")
flags.DEFINE_bool("fall_back_to_good_checkpoint", False,
                  "When the latest checkpoint fails its checksums, move it to <workdir>/corrupt_checkpoints "
                  "and resume from the newest one that verifies (without it, a corrupt checkpoint is an error).")
config_flags.DEFINE_config_file("config", None, "Classifier config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from experiments import trainer
    trainer.train_classifier(FLAGS.config, FLAGS.workdir, fall_back=FLAGS.fall_back_to_good_checkpoint)


if __name__ == "__main__":
    cli.run(main)
