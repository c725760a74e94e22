"""Topic config validation, topic names, and the CLI's KEY=VALUE parsing."""

from __future__ import annotations

import numpy as np
import pytest

import shmbus.core.config as config_module
from shmbus.core.config import (
    TOPIC_CONFIG_DOCS,
    TOPIC_DEFAULTS,
    parse_config_pairs,
    validate_topic_config,
    validate_topic_name,
)
from shmbus.errors import InvalidConfigError, InvalidTopicError

EXPECTED_DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": 604800000,
    "retention.bytes": -1,
    "segment.bytes": 67108864,
    "segment.ms": 604800000,
    "max.message.bytes": 1048576,
    "delete.retention.ms": 86400000,
    "min.compaction.lag.ms": 0,
    "ring.bytes": 16777216,
    "unblock.timeout.ms": 1000,
}

# key -> [(given, stored)]
GOOD = {
    "cleanup.policy": [
        ("delete", "delete"),
        ("compact", "compact"),
        ("compact,delete", "compact,delete"),
        ("delete,compact", "compact,delete"),
        (" compact , delete ", "compact,delete"),
        (["delete", "compact"], "compact,delete"),
        (("compact",), "compact"),
    ],
    "retention.ms": [(-1, -1), (0, 0), ("-1", -1), ("3600000", 3600000), (2**63 - 1, 2**63 - 1)],
    "retention.bytes": [(-1, -1), (0, 0), ("1073741824", 1073741824), (np.int64(5), 5)],
    "segment.bytes": [(1024, 1024), ("1024", 1024), (2**31 - 1, 2**31 - 1), ("65536", 65536)],
    "segment.ms": [(1, 1), ("60000", 60000), (np.int32(7), 7)],
    "max.message.bytes": [(1, 1), ("65536", 65536), (2**30, 2**30), (" 100 ", 100)],
    "delete.retention.ms": [(0, 0), ("0", 0), (86400000, 86400000)],
    "min.compaction.lag.ms": [(0, 0), ("+5", 5), (10**12, 10**12)],
    "ring.bytes": [(4096, 4096), ("65536", 65536), (2**40, 2**40), ("1099511627776", 2**40), (np.uint64(8192), 8192)],
    "unblock.timeout.ms": [(10, 10), ("1000", 1000), (2**31 - 1, 2**31 - 1), (np.int64(15000), 15000)],
}

BAD = {
    "cleanup.policy": ["", "Delete", "compact;delete", "none", "compact,,delete", 1, None, True, ["delete", 5], []],
    "retention.ms": [-2, "-2", "1e6", "1.5", 1.0, True, None, "", "abc", "0x10", "1_000", 2**63, "seven"],
    "retention.bytes": [-2, "-5", False, 3.0, "10KB"],
    "segment.bytes": [1023, 0, -1, 2**31, "100", "2147483648", 1024.0],
    "segment.ms": [0, -1, "0", None],
    "max.message.bytes": [0, -1, 2**30 + 1, "0", "1073741825", True],
    "delete.retention.ms": [-1, "-1", 0.5],
    "min.compaction.lag.ms": [-1, "-100", "x"],
    "ring.bytes": [100000, "100000", 4095, 2048, 0, -4096, 2**41, 2**40 + 1, 6144, "4096.0", True, 65536.0],
    "unblock.timeout.ms": [9, 0, -1, "5", 2**31, 1000.0, True, None, "1s"],
}


def test_defaults_table():
    assert TOPIC_DEFAULTS == EXPECTED_DEFAULTS
    assert list(TOPIC_DEFAULTS) == list(EXPECTED_DEFAULTS)  # the documented order
    assert list(TOPIC_CONFIG_DOCS) == list(TOPIC_DEFAULTS)
    assert all(isinstance(d, str) and d for d in TOPIC_CONFIG_DOCS.values())


def test_module_doc_names_every_key_and_default():
    doc = config_module.__doc__
    for key, default in TOPIC_DEFAULTS.items():
        assert f"{key} (" in doc
        assert f"Default: {default}" in doc or f"Default: ``{default}``" in doc


def test_none_and_empty_give_all_defaults():
    for cfg in (None, {}):
        out = validate_topic_config(cfg)
        assert out == EXPECTED_DEFAULTS
        assert out is not TOPIC_DEFAULTS
    out = validate_topic_config()
    out["ring.bytes"] = 1
    assert TOPIC_DEFAULTS["ring.bytes"] == 16777216  # a new dict, not the table


@pytest.mark.parametrize("key", list(EXPECTED_DEFAULTS))
def test_each_default_validates(key):
    default = EXPECTED_DEFAULTS[key]
    assert validate_topic_config({key: default})[key] == default
    assert validate_topic_config({key: str(default)})[key] == default


@pytest.mark.parametrize("key,given,stored", [(k, g, s) for k, v in GOOD.items() for g, s in v])
def test_good_values(key, given, stored):
    out = validate_topic_config({key: given})
    assert out[key] == stored
    assert type(out[key]) is type(stored)
    assert list(out) == list(TOPIC_DEFAULTS)
    for other, default in EXPECTED_DEFAULTS.items():
        if other != key:
            assert out[other] == default


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD.items() for v in vs])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(InvalidConfigError) as info:
        validate_topic_config({key: value})
    msg = str(info.value)
    assert f"{key}=" in msg
    assert isinstance(info.value, ValueError)


def test_ring_bytes_message_suggests_a_power_of_two():
    with pytest.raises(InvalidConfigError) as info:
        validate_topic_config({"ring.bytes": 100000})
    assert str(info.value) == "ring.bytes must be a power of two: ring.bytes=100000 (try 131072)"
    with pytest.raises(InvalidConfigError, match=r"ring.bytes=1000 \(try 4096\)"):
        validate_topic_config({"ring.bytes": "1000"})


def test_range_messages_say_what_is_allowed():
    cases = {
        ("retention.ms", -2): ">= -1",
        ("segment.bytes", 10): "from 1024 to 2147483647",
        ("max.message.bytes", 0): "from 1 to 1073741824",
        ("cleanup.policy", "x"): "delete, compact, or compact,delete",
        ("segment.ms", "soon"): "integer",
    }
    for (key, value), allowed in cases.items():
        with pytest.raises(InvalidConfigError, match=allowed):
            validate_topic_config({key: value})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(InvalidConfigError) as info:
        validate_topic_config({"retention.msec": 5})
    msg = str(info.value)
    assert "retention.msec" in msg
    for key in TOPIC_DEFAULTS:
        assert key in msg
    with pytest.raises(InvalidConfigError, match="compression.type"):
        validate_topic_config({"compression.type": "lz4"})


def test_config_must_be_a_mapping():
    with pytest.raises(InvalidConfigError):
        validate_topic_config([("retention.ms", 5)])


def test_base_fills_in_and_config_overrides():
    base = validate_topic_config({"retention.ms": 1000, "ring.bytes": 8192})
    out = validate_topic_config({"retention.ms": "2000"}, base=base)
    assert out["retention.ms"] == 2000
    assert out["ring.bytes"] == 8192
    assert out["segment.bytes"] == 67108864
    assert base["retention.ms"] == 1000  # not changed in place
    assert validate_topic_config(None, base=base) == base
    assert validate_topic_config(None, base=base) is not base


def test_base_is_checked_too():
    with pytest.raises(InvalidConfigError, match="ring.bytes="):
        validate_topic_config({}, base={"ring.bytes": 3})
    with pytest.raises(InvalidConfigError, match="bogus"):
        validate_topic_config({}, base={"bogus": 1})


def test_input_not_modified():
    cfg = {"ring.bytes": "65536", "cleanup.policy": "delete,compact"}
    validate_topic_config(cfg)
    assert cfg == {"ring.bytes": "65536", "cleanup.policy": "delete,compact"}


# -- topic names ---------------------------------------------------------------

GOOD_NAMES = ["a", "A", "0", "prices", "my-topic_1.v2", "...", ".a", "a..", "_", "-", "x" * 249, "Z9._-"]
BAD_NAMES = ["", ".", "..", "a/b", "a b", "x" * 250, "tópico", "a\nb", "a*", "a\x00", "/", "a:b", "\u0660"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name):
    assert validate_topic_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(name):
    with pytest.raises(InvalidTopicError) as info:
        validate_topic_name(name)
    msg = str(info.value)
    assert "249" in msg and "A-Z a-z 0-9 . _ -" in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", [None, 5, b"topic", ["t"], 1.5])
def test_non_str_names(name):
    with pytest.raises(InvalidTopicError, match="must be a str"):
        validate_topic_name(name)


def test_name_messages_say_why():
    with pytest.raises(InvalidTopicError, match="'/'"):
        validate_topic_name("a/b")
    with pytest.raises(InvalidTopicError, match="250 characters"):
        validate_topic_name("x" * 250)
    with pytest.raises(InvalidTopicError, match="empty"):
        validate_topic_name("")


# -- KEY=VALUE -----------------------------------------------------------------


def test_parse_config_pairs():
    assert parse_config_pairs([]) == {}
    assert parse_config_pairs(None) == {}
    assert parse_config_pairs(["retention.ms=1000", "cleanup.policy=compact,delete"]) == {
        "retention.ms": "1000",
        "cleanup.policy": "compact,delete",
    }
    assert parse_config_pairs(["a=b=c"]) == {"a": "b=c"}  # split at the first "="
    assert parse_config_pairs([" ring.bytes =65536"]) == {"ring.bytes": "65536"}
    assert parse_config_pairs(["k=1", "k=2"]) == {"k": "2"}  # the last wins
    assert parse_config_pairs(["k="]) == {"k": ""}
    assert parse_config_pairs("retention.ms=5") == {"retention.ms": "5"}


def test_parse_then_validate():
    cfg = validate_topic_config(parse_config_pairs(["ring.bytes=65536", "retention.ms=-1"]))
    assert cfg["ring.bytes"] == 65536 and cfg["retention.ms"] == -1


@pytest.mark.parametrize("item", ["retention.ms", "", "=5", " =5", 5, None])
def test_parse_config_pairs_bad_item(item):
    with pytest.raises(InvalidConfigError, match="KEY=VALUE"):
        parse_config_pairs([item])
