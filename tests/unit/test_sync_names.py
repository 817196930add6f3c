"""Safe names: what check_name / check_siblings accept and refuse."""

from __future__ import annotations

import unicodedata

import pytest

from officegrid.sync.names import (
    MAX_PATH,
    UnsafeName,
    check_name,
    check_siblings,
    fold_name,
    long_path_warning,
)


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "README.md",
        "a b",
        " leading space",
        ".hidden",
        "archive.tar.gz",
        "été",
        "日本語.txt",
        "CONSOLE",
        "con1",
        "COM0",
        "LPT10",
        "nul_file",
        "x" * 255,
        "emoji-😀",
        "a..b",
    ],
)
def test_check_name_accepts(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        (".", "not allowed"),
        ("..", "not allowed"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("tab\there", "control"),
        ("del\x7f", "control"),
        ("c1\x85", "control"),
        ("CON", "reserved"),
        ("con", "reserved"),
        ("CON.txt", "reserved"),
        ("nul.tar.gz", "reserved"),
        ("Aux", "reserved"),
        ("prn.", "dot"),
        ("com1", "reserved"),
        ("COM9.log", "reserved"),
        ("lpt5", "reserved"),
        ("COM\u00b9", "reserved"),
        ("trailing.", "dot"),
        ("trailing ", "space"),
        ("e\u0301", "NFC"),
        ("a:b", "Windows"),
        ("what?", "Windows"),
        ("x" * 256, "bytes"),
        ("é" * 128, "bytes"),
        ("bad\ud800", "surrogate"),
    ],
)
def test_check_name_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafeName) as info:
        check_name(name)
    assert reason.lower() in info.value.reason.lower()


def test_unsafe_name_reports_given_path() -> None:
    with pytest.raises(UnsafeName) as info:
        check_name("..", path="src/pkg/..")
    assert info.value.path == "src/pkg/.."
    assert "src/pkg/.." in str(info.value)


def test_non_string_refused() -> None:
    with pytest.raises(UnsafeName):
        check_name(b"a")  # type: ignore[arg-type]


def test_siblings_distinct_ok() -> None:
    check_siblings(["a", "b", "a.txt", "é", "e"])


@pytest.mark.parametrize(
    "names",
    [
        ["A", "a"],
        ["README.md", "readme.MD"],
        ["\u00e9", "e\u0301"],  # NFC vs NFD
        ["\u00c9", "e\u0301"],  # case and normalization together
        ["same", "same"],
        ["straße", "STRASSE"],
    ],
)
def test_siblings_collide(names: list[str]) -> None:
    with pytest.raises(UnsafeName) as info:
        check_siblings(names, where="pkg/sub")
    assert info.value.path.startswith("pkg/sub/")
    assert "collides" in info.value.reason


def test_fold_name_is_normalization_and_case_insensitive() -> None:
    nfd = unicodedata.normalize("NFD", "Éte")
    assert fold_name(nfd) == fold_name("éTE")


def test_long_path_warning() -> None:
    assert long_path_warning("a" * MAX_PATH) is None
    warning = long_path_warning("a/" * 200)
    assert warning is not None and "260" in warning
