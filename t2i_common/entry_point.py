"""The absl main of the commands that run on an experiment config and a run folder (train, pretrain, evaluate).

    if __name__ == "__main__":
      flags.DEFINE_string("split", "test", "...")     # the command's own flags, if any, first
      run_config_command(main, config_kind="DAMSM", workdir_help="Run folder of pretrain_damsm ...")

gives every such command the same `--config path.py[:variant]` (ml_collections, locked: an unknown key in a
`--config.a.b=value` override fails at once, naming the key with a did-you-mean), a required `--workdir` (both
listed by --help with the command's own flags), and the entry points' logging (t2i_common.logging.
setup_cli_logging) before `main(FLAGS)` runs. Flags are defined only when the module runs as a program, so
importing it (tests, notebooks) defines none.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from t2i_common.logging import setup_cli_logging


def run_config_command(main: Callable[[Any], Any], *, config_kind: str, workdir_help: str) -> None:
  """Defines --config and --workdir (both required), parses the command line and calls main(absl FLAGS)."""
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, f"{config_kind} config file (path.py[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  for name in ("config", "workdir"):  # listed by --help, which shows the flags of the program's own file
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  def absl_main(argv) -> None:
    del argv
    setup_cli_logging()
    main(flags.FLAGS)

  app.run(absl_main)
