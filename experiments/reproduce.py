"""Reproduce a paper's comparison table: ``python -m experiments.reproduce --study ddim_table1 --workdir runs/studies/ddim_table1``.

A study (``configs/studies/<name>.py``) names the models it needs as overrides of a dataset's
config and the cells it measures. This trains each model (resuming, or skipping it when its last
checkpoint is at ``train.num_steps``), trains the feature classifier for 28×28 data other than the
embedded MNIST, measures every cell once (``<workdir>/cells/<cell>.json``; a rerun skips measured
cells) and writes ``<workdir>/report.md`` with the table, a PNG plot, the paper's claims checked
on the figures, and the commands behind each cell. ``--scale paper`` drops the study's CPU
budget and uses the papers' models, steps and 50,000 samples; ``--dataset cifar10`` switches data
(Inception features, ``--inception_weights``); ``--plan_only`` prints every training and measuring
command the study would run, and runs none. The work is ``experiments.studies``: plan, measure,
report.
"""
from absl import flags, logging

from experiments import cli, studies
from experiments.studies import plan

flags.DEFINE_string("study", None, "A study in configs/studies (name) or a path to a study file.")
flags.DEFINE_string("workdir", None, "Where the study's models, measurements and report go.")
flags.DEFINE_enum("dataset", None, sorted(plan.DATASETS), "Data for the study (default: the study's own).")
flags.DEFINE_string("data", None, "Path to the dataset's .npz (default: the dataset config's).")
flags.DEFINE_enum("scale", "default", ["default", "paper"], "The study's CPU budget, or the papers' settings.")
flags.DEFINE_integer("batch", 250, "Samples per compiled batch (a multiple of the device count).")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05 weights (non-28×28 data).")
flags.DEFINE_bool("plan_only", False, "Print the commands behind every training and cell, in order, and stop.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    studies.run_study(plan.load_study(FLAGS.study), FLAGS.workdir, dataset=FLAGS.dataset, data=FLAGS.data,
                      scale=FLAGS.scale, batch=FLAGS.batch, inception_weights=FLAGS.inception_weights,
                      plan_only=FLAGS.plan_only)


if __name__ == "__main__":
    flags.mark_flags_as_required(["study", "workdir"])
    cli.run(main)
