"""`python -m profiles <name> [--check] [--params PATH]`: print `dvc exp run` overrides, or validate them."""
from __future__ import annotations

import sys

from profiles import names, overrides, set_params_args


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m profiles <{'|'.join(names())}> [--check] [--params PATH]\n"
              f"       dvc exp run -n <name> $(python -m profiles <name>)", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    try:
        if "--check" in rest:
            from pipeline.config import load_params

            path = rest[rest.index("--params") + 1] if "--params" in rest else None
            params = load_params(path, overrides(name))
            import yaml

            print(yaml.safe_dump(params.model_dump(mode="json", include={k.split(".")[0] for k in overrides(name)}),
                                 sort_keys=False), end="")
            return 0
        print(" ".join(set_params_args(name)))
        return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
