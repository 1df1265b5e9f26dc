"""``aicp keygen FILE``: create an Ed25519 identity file (the hex seed, mode 0600) and print its public key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aicp.signing import Identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="where to write the key (refuses to overwrite unless --force)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    ident = Identity.generate()
    ident.save(path)
    print(ident.public_key_text)
    return 0
