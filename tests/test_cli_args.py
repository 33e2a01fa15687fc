"""The shared command-line value types (t2i_common.cli_args) and their errors, as argparse reports them."""
import argparse

import pytest

from t2i_common import cli_args


def _parser(kind):
  p = argparse.ArgumentParser(prog="prog")
  p.add_argument("--x", type=kind)
  return p


@pytest.mark.parametrize("kind,text,value", [
    (cli_args.parse_seeds, "0-3,10", [0, 1, 2, 3, 10]),
    (cli_args.parse_seeds, " 7 ", [7]),
    (cli_args.positive_int, "3", 3),
    (cli_args.parse_bool, "Yes", True),
    (cli_args.parse_bool, "0", False),
    (cli_args.comma_separated(int), "0,10,24", [0, 10, 24]),
    (cli_args.comma_separated(float), "5, 40", [5.0, 40.0]),
    (cli_args.comma_separated(float, count=2), "1,0.5", (1.0, 0.5)),
    (cli_args.comma_separated(cli_args.positive_int), "25", [25]),
    (cli_args.parse_resolution, "16", (16, 16)),
    (cli_args.parse_resolution, "16x8", (16, 8)),
    (cli_args.parse_resolution, "8,8", (8, 8)),
    (cli_args.parse_step_values, "0:0.05, 10:0.5", {0: 0.05, 10: 0.5}),
    (cli_args.parse_step_values, "none", {}),
])
def test_values(kind, text, value):
  assert _parser(kind).parse_args(["--x", text]).x == value


@pytest.mark.parametrize("kind,text,message", [
    (cli_args.parse_seeds, "a,b", "expected integers like 0,1,2 or a range 0-7"),
    (cli_args.parse_seeds, ",", "--seeds is empty"),
    (cli_args.positive_int, "0", "expected a positive integer, got '0'"),
    (cli_args.parse_bool, "maybe", "expected true or false"),
    (cli_args.comma_separated(int), "1,x", "expected comma-separated integers"),
    (cli_args.comma_separated(float, count=2), "1,2,3", "expected 2 comma-separated numbers"),
    (cli_args.comma_separated(cli_args.positive_int), "2,0", "expected comma-separated positive integers"),
    (cli_args.parse_resolution, "16y16", "expected a size like 16, 16x16 or 16,16"),
    (cli_args.parse_resolution, "0", "expected a size"),
    (cli_args.parse_step_values, "0.5", "expected step:value pairs like 0:0.05,10:0.5"),
    (cli_args.parse_step_values, "0:1e", "expected step:value pairs"),
])
def test_bad_values_name_the_flag_and_the_form(kind, text, message, capsys):
  with pytest.raises(SystemExit):
    _parser(kind).parse_args(["--x", text])
  err = capsys.readouterr().err
  assert "argument --x:" in err and message in err, err


def test_errors_as_exit():
  with pytest.raises(SystemExit, match=r"^study: no such folder$"):
    with cli_args.errors_as_exit("study"):
      raise FileNotFoundError("no such folder")
  with pytest.raises(KeyError):  # other errors are bugs: they keep their traceback
    with cli_args.errors_as_exit():
      raise KeyError("x")


def test_config_overrides_read_booleans_the_same_way():
  from t2i_common.config import ConfigError, load_config
  spec = "configs/attngan/attngan_shapes.py:tiny"
  assert load_config(spec, ["logging.progress_bar=No"]).logging.progress_bar is False
  with pytest.raises(ConfigError, match=r"logging.progress_bar='maybe': expected a boolean"):
    load_config(spec, ["logging.progress_bar=maybe"])
