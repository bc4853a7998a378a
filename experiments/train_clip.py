"""Train a CLIP on captioned images: ``python -m experiments.train_clip --config configs/text/clip_mnist.py --workdir runs/clip_mnist``.

Captions come from each image's class and measured attributes (``diffusion.text.captions``); the
run writes its tokenizer (``tokenizer.json``), checkpoints and logs, and the held-out zero-shot
class accuracy and retrieval recall@1/@5 (``clip_eval.json``). A rerun resumes.
"""
from absl import flags, logging

from experiments import cli

cli.define_training_flags("the tokenizer and held-out evaluation", "CLIP config file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from experiments.text import clip_training
    clip_training.train_clip(FLAGS.config, FLAGS.workdir, fall_back=FLAGS.fall_back_to_good_checkpoint)


if __name__ == "__main__":
    cli.run(main)
