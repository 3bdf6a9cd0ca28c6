"""Command-line parsing shared by every console script.

argparse takes a token that begins with ``-`` for an option unless it looks
like a plain negative number, so ``--shear -0.02,0`` or ``-e -2113737-10``
(ShapePipe's file-number form) are refused although ``--shear=-0.02,0``
works. :class:`ArgumentParser` accepts both forms: a token that follows an
option taking one value, and is not itself a known option, is that value.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose single-valued options accept values beginning with ``-``."""

    def _single_value_options(self) -> set[str]:
        names = set()
        for action in self._actions:
            if action.option_strings and action.nargs in (None, "?") and action.const is None \
                    and not isinstance(action, (argparse._StoreConstAction, argparse._HelpAction,
                                                argparse._VersionAction, argparse._CountAction)):
                names.update(action.option_strings)
        return names

    def _join_dash_values(self, args: list[str]) -> list[str]:
        takes_value = self._single_value_options()
        known = set(self._option_string_actions)
        joined, i = [], 0
        while i < len(args):
            token = args[i]
            if token == "--":
                joined.extend(args[i:])
                break
            following = args[i + 1] if i + 1 < len(args) else None
            if (token in takes_value and following is not None and following.startswith("-")
                    and following != "-" and following.split("=", 1)[0] not in known
                    and not following.startswith("--")):
                joined.append(f"{token}={following}")
                i += 2
                continue
            joined.append(token)
            i += 1
        return joined

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._join_dash_values(args), namespace)
