"""Did-you-mean: the closest allowed name to a misspelt one (a manifest key, an environment)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from stacklock.errors import InvalidInput, Problem


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The allowed name nearest to `word`, or None when none is near enough to suggest."""
    options = [c for c in choices if c != word]
    folded = {c.casefold(): c for c in options}
    if word.casefold() in folded:
        return folded[word.casefold()]
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean 'prod'? ' (with the trailing space) or '' when nothing is close."""
    best = closest(word, choices)
    return f"did you mean {best!r}? " if best is not None else ""


def unknown_environment(name: str, known: Iterable[str]) -> InvalidInput:
    """The error for an environment the manifest does not have: exit 2, naming the closest
    one (`verify prdo`: did you mean 'prod'?) and every one there is."""
    names = list(known)
    return InvalidInput(f"{name!r} is not an environment of the manifest", problems=[Problem(
        "ENV", f"{name!r} is not an environment of the manifest",
        did_you_mean(name, names) + "use one of: " + ", ".join(names))])
