"""Docker's .dockerignore rules (moby/patternmatcher), for the patterns a .dockerignore may hold: the rehearsed
`instill build` (tests/image_build.py) applies them to tell what docker receives."""

from __future__ import annotations

import posixpath
import re


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per pattern: comments and blanks skipped, paths cleaned, leading / dropped."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if exception else line)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        rules.append((exception, re.compile(_pattern_regex(pattern))))
    return rules


def _pattern_regex(pattern: str) -> str:
    regex, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char in "[]":
            regex += char  # character classes pass through, as in Go's filepath.Match
        else:
            regex += re.escape(char)
        i += 1
    return regex + "$"


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """A path is excluded when the last rule matching it or one of its parent folders is not an exception."""
    parents = path.split("/")[:-1]
    excluded = False
    for exception, regex in rules:
        matched = bool(regex.match(path)) or any(regex.match("/".join(parents[:n])) for n in range(1, len(parents) + 1))
        if matched:
            excluded = not exception
    return excluded
