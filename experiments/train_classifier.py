"""Train a classifier: ``python -m experiments.train_classifier --config configs/classifier_mnist.py --workdir runs/classifier``.

``classifier.kind='cnn'`` trains the feature classifier that FID and the Inception Score use for
28×28 data; ``'noisy'`` trains ADM's noisy classifier for classifier guidance. Both report the
held-out accuracy and write the EMA weights to ``<workdir>/classifier.msgpack``; a rerun resumes.
"""
from absl import flags, logging

from experiments import cli

cli.define_training_flags("the trained weights", "Classifier config file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from experiments import classifier_loop
    classifier_loop.train_classifier(FLAGS.config, FLAGS.workdir, fall_back=FLAGS.fall_back_to_good_checkpoint)


if __name__ == "__main__":
    cli.run(main)
