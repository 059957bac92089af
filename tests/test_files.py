"""Reading files under a size cap (plugin files, host configs, CLI input)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from plugsafe._files import read_capped


def test_reads_a_whole_small_file(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    with f.open("rb") as fh:
        assert read_capped(fh, 100) == b"hello"
    with f.open("rb") as fh:
        assert read_capped(fh, 5) == b"hello"  # exactly at the cap
    (tmp_path / "empty").write_bytes(b"")
    with (tmp_path / "empty").open("rb") as fh:
        assert read_capped(fh, 5) == b""


def test_stops_one_byte_past_the_cap(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    with f.open("rb") as fh:
        assert read_capped(fh, 10) == b"x" * 11


def test_a_file_that_grew_after_its_size_was_read_is_read_on(tmp_path: Path) -> None:
    small = tmp_path / "then.bin"
    small.write_bytes(b"a" * 10)  # what fstat saw
    grown = tmp_path / "now.bin"
    grown.write_bytes(b"a" * 10 + b"b" * 10)  # what is there when it is read

    class Stale(io.BufferedReader):
        def fileno(self) -> int:
            return stale.fileno()

    with small.open("rb") as stale, Stale(io.FileIO(grown, "rb")) as fh:
        assert read_capped(fh, 100) == b"a" * 10 + b"b" * 10
        assert os.fstat(fh.fileno()).st_size == 10  # the size really was stale


def test_streams_without_a_size_are_read_up_to_the_cap() -> None:
    assert read_capped(io.BytesIO(b"z" * 50), 100) == b"z" * 50
    assert read_capped(io.BytesIO(b"z" * 500), 100) == b"z" * 101
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as out:
            out.write(b"p" * 70_000)  # more than a pipe buffer: several reads

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as fh:
        assert read_capped(fh, 1_000_000) == b"p" * 70_000
    t.join()
