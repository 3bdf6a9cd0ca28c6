"""Values beginning with '-' after options that take one value (file numbers, shears)."""

import pytest

from shapepipe.arguments import ArgumentParser


def _parser():
    parser = ArgumentParser(prog="t")
    parser.add_argument("-e", "--exclusive")
    parser.add_argument("--shear", action="append")
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("-n", type=int, default=0)
    return parser


@pytest.mark.parametrize("argv", [["-e", "-2113737-10"], ["-e=-2113737-10"], ["--exclusive", "-2113737-10"],
                                  ["--exclusive=-2113737-10"]])
def test_file_number_with_leading_dash_both_forms(argv):
    assert _parser().parse_args(argv).exclusive == "-2113737-10"


def test_negative_pairs_repeat_and_flags_still_parse():
    args = _parser().parse_args(["--shear", "-0.02,0", "--flag", "--shear", "0,-0.02", "-n", "-3"])
    assert args.shear == ["-0.02,0", "0,-0.02"]
    assert args.flag and args.n == -3


def test_a_known_option_is_not_taken_as_a_value():
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["-e", "--flag"])


def test_console_scripts_take_negative_shears_and_numbers():
    from shapepipe.cli import _parser as run_parser
    from shapepipe_modules.simulate.cli import build_parser

    assert build_parser().parse_args(["--shear", "-0.02,0"]).shear == [[-0.02, 0.0]]
    assert run_parser().parse_args(["-c", "x.ini", "-e", "-000-000"]).exclusive == "-000-000"
