"""The documentation that ships with the code agrees with the code, and the repository's text
points at nothing outside it.

- docs/configuration.md's generated tables are what tools/gen_config_doc.py renders from
  shmbus/config.py and the client signatures, and the topic table's defaults and ranges are
  the ones validate_topic_config enforces (checked against the code directly, not only
  through the generator);
- every environment variable the package reads is documented;
- docs/api.md names every public name, error and CLI command;
- no text under README.md, CHANGELOG.md, docs/, shmbus/, bench/, tools/ refers to files
  outside the repository (``../shared``), to issue numbers, or to absolute paths of a machine
  (``/work/...``, ``/root/...``).
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

import shmbus
from shmbus import errors
from shmbus.core.config import TOPIC_DEFAULTS, validate_topic_config
from shmbus.errors import InvalidConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
API_DOC = os.path.join(ROOT, "docs", "api.md")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _gen_tool():
    spec = importlib.util.spec_from_file_location("gen_config_doc", os.path.join(ROOT, "tools", "gen_config_doc.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- docs/configuration.md ---------------------------------------------------------------


@pytest.mark.parametrize("block", ["topic-config", "client-options"])
def test_generated_block_is_current(block):
    tool = _gen_tool()
    text = _read(CONFIG_DOC)
    assert tool.read_block(text, block) == tool.blocks()[block], (
        f"docs/configuration.md's {block} table differs from the code: run python tools/gen_config_doc.py")


def test_render_is_stable():
    tool = _gen_tool()
    text = _read(CONFIG_DOC)
    assert tool.render(text) == text


def _topic_rows() -> dict:
    """key -> (default cell, allowed cell) from the doc's topic table."""
    text = _gen_tool().read_block(_read(CONFIG_DOC), "topic-config")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0] != "key":
            rows[cells[0].strip("`")] = (cells[2], cells[3])
    return rows


def _int(text: str) -> int:
    text = text.strip()
    if text.startswith("2**"):
        return 2 ** int(text[3:])
    return int(text)


def test_topic_table_matches_config():
    rows = _topic_rows()
    assert list(rows) == list(TOPIC_DEFAULTS), "the doc's topic keys differ from shmbus/config.py's"
    for key, default in TOPIC_DEFAULTS.items():
        cell, allowed = rows[key]
        shown = re.match(r"`([^`]*)`", cell).group(1)
        assert shown == str(default), f"{key}: the doc says default {shown}, config.py {default}"
        if key == "cleanup.policy":
            for word in re.findall(r"`([a-z,]+)`", allowed):
                validate_topic_config({key: word})
            continue
        m = re.search(r"(-?[0-9*]+) (?:to (-?[0-9*]+)|or more)", allowed)
        assert m, f"{key}: no range in the doc's allowed cell {allowed!r}"
        lo = _int(m.group(1))
        hi = _int(m.group(2)) if m.group(2) else None
        assert validate_topic_config({key: lo})[key] == lo, key
        with pytest.raises(InvalidConfigError, match=re.escape(key)):
            validate_topic_config({key: lo - 1})
        if hi is not None:
            assert validate_topic_config({key: hi})[key] == hi, key
            with pytest.raises(InvalidConfigError, match=re.escape(key)):
                validate_topic_config({key: hi * 2 if key == "ring.bytes" else hi + 1})


def test_environment_variables_are_documented():
    used = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "shmbus")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                used |= set(re.findall(r"SHMBUS_[A-Z_]+", _read(os.path.join(dirpath, name))))
            elif name.endswith(".c"):  # (names of C macros are not environment variables)
                used |= set(re.findall(r"getenv\(\"(SHMBUS_[A-Z_]+)", _read(os.path.join(dirpath, name))))
    doc = _read(CONFIG_DOC)
    missing = sorted(v for v in used if v not in doc)
    assert not missing, f"environment variables read by shmbus but not in docs/configuration.md: {missing}"


# --- docs/api.md ---------------------------------------------------------------------------


def test_api_doc_names_every_public_name():
    doc = _read(API_DOC)
    missing = [n for n in shmbus.__all__ if n != "__version__" and f"`{n}" not in doc]
    missing += [n for n in errors.__all__ if f"`{n}" not in doc]
    assert not missing, f"public names not in docs/api.md: {sorted(set(missing))}"


def _commands(group, prefix=("shmbus",)):
    import click

    for name, cmd in group.commands.items():
        words = prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, words)
        else:
            yield words, cmd


def test_api_doc_names_every_cli_command_and_option():
    from shmbus.cli.main import cli

    doc = _read(API_DOC)
    missing = []
    for words, cmd in _commands(cli):
        line = " ".join(words)
        if line not in doc:
            missing.append(line)
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("--") and opt not in doc:
                    missing.append(f"{line} {opt}")
    assert not missing, f"commands and options not in docs/api.md: {missing}"


# --- no history, nothing outside the repository --------------------------------------------

SCANNED = ["README.md", "CHANGELOG.md", "docs", "shmbus", "bench", "tools"]
FORBIDDEN = [
    (re.compile(r"\.\./shared"), "a file outside the repository"),
    (re.compile(r"issue #[0-9]", re.IGNORECASE), "an issue number"),
    (re.compile(r"(?<![\w.~-])/(?:work|root)/"), "an absolute path of a machine"),
    # (lower-case "earlier version" is the cleaner's word for an older record of a key)
    (re.compile(r"\bAn earlier version\b|(?i:what changed in|\bsession [0-9])"), "development history"),
]


def _text_files():
    for top in SCANNED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for name in filenames:
                if name.endswith((".so", ".pyc", ".o")):
                    continue
                yield os.path.join(dirpath, name)


def test_repository_text_names_nothing_outside_it():
    assert os.path.isfile(os.path.join(ROOT, "CHANGELOG.md")) and os.path.isdir(os.path.join(ROOT, "docs"))
    hits = []
    for path in _text_files():
        try:
            text = _read(path)
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    hits.append(f"{os.path.relpath(path, ROOT)}:{n}: {what}: {line.strip()[:120]}")
    assert not hits, "text that refers outside the repository or tells its history:\n" + "\n".join(hits)


# --- links between the documents ------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = heading.strip().lower().replace("`", "")
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_relative_links_resolve():
    docs = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")]
    docs += [os.path.join(ROOT, "docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs"))) if n.endswith(".md")]
    bad = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", _read(doc)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if not full.startswith(ROOT + os.sep) or not os.path.exists(full):
                bad.append(f"{os.path.relpath(doc, ROOT)}: {target}: no such file in the repository")
                continue
            if anchor:
                heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(full), re.MULTILINE)}
                if anchor not in heads:
                    bad.append(f"{os.path.relpath(doc, ROOT)}: {target}: no such heading")
    assert not bad, "broken links:\n" + "\n".join(bad)
