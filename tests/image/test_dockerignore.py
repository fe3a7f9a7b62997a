"""The .dockerignore matcher the build rehearsal relies on (tests/dockerignore.py) follows Docker's rules."""

from dockerignore import dockerignore_rules, dockerignored


def test_dockerignore_matcher_follows_dockers_rules():
    rules = dockerignore_rules("# c\n__pycache__\n**/*.pyc\n/venv\ntests/\nweights/*/.cache\nkeep*\n!keep.me\n")
    assert dockerignored("__pycache__/a.pyc", rules)
    assert dockerignored("pkg/mod.pyc", rules) and dockerignored("a.pyc", rules)
    assert not dockerignored("pkg/__pycache__/x", rules[:1])  # a bare name is the top-level one only
    assert dockerignored("venv/bin/python", rules) and not dockerignored("src/venv", rules)
    assert dockerignored("tests/test_x.py", rules) and not dockerignored("pkg/tests/x.py", rules)
    assert dockerignored("weights/base/.cache/huggingface/x", rules)
    assert not dockerignored("weights/base/unet/config.json", rules)
    assert dockerignored("keep.you", rules) and not dockerignored("keep.me", rules)
