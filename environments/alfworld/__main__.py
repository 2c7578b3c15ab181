"""Write playable ALFWorld games offline.

``python -m environments.alfworld --out DIR --num-games N --split train|seen|unseen --seed S
[--workers K]`` writes an ALFWORLD_DATA-style tree (``DIR/json_2.1.1/<split dir>/...``) plus a
manifest; running it again with a larger N only adds the missing games (see
:mod:`environments.alfworld.generate` for how a game is made and checked).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

from environments.alfworld.data import SPLIT_ALIASES, generate_into


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True,
                        help="output root, usable as ALFWORLD_DATA: games go to OUT/json_2.1.1/<split dir>/...")
    parser.add_argument("--num-games", type=int, required=True)
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_ALIASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (about 1.4 s per game each)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = generate_into(args.out, args.split, args.num_games, args.seed, log_every=10, workers=args.workers)
    elapsed = time.perf_counter() - start
    print(json.dumps({"games": len(paths), "out": os.path.abspath(args.out), "seconds": round(elapsed, 1)}))


if __name__ == "__main__":
    main()
