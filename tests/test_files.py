"""Writing output files whole (core/files.py): names at the file system's limit, names past it,
and symbolic links."""

from __future__ import annotations

import os

import pytest

from saliencelab.core.errors import SaliencelabError
from saliencelab.core.files import write_whole


def _write(data: bytes):
    return lambda f: f.write(data)


def test_a_name_at_the_limit_is_written_and_one_past_it_is_one_sentence(tmp_path):
    """A legal 250-character name was refused (the temporary name beside it is 15 characters
    longer), and a name over 255 characters raised OSError with a traceback."""
    longest = tmp_path / ("m" * 251 + ".png")  # 255 bytes
    assert write_whole(longest, _write(b"png"), "the picture").read_bytes() == b"png"
    assert [p.name for p in tmp_path.iterdir()] == [longest.name]  # no temporary file left
    with pytest.raises(SaliencelabError, match="Cannot write the picture") as err:
        write_whole(tmp_path / ("m" * 300 + ".png"), _write(b"png"), "the picture")
    assert "\n" not in str(err.value)


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path):
    """Writing onto a link replaced the link by a regular file and left its target as it was."""
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "latest.png"
    os.symlink(target, link)
    write_whole(link, _write(b"new"), "the picture")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and link.read_bytes() == b"new"


def test_a_file_where_a_folder_is_to_be_made_is_named(tmp_path):
    """`rep.to_csv("out/afile/x.csv")` with out/afile a file said "(File exists)"; it now names
    the file in the way (as save_curves did), and writes nothing."""
    (tmp_path / "afile").write_text("mine")
    target = tmp_path / "afile" / "sub" / "x.csv"
    with pytest.raises(SaliencelabError, match=r"afile' is a file, where the folder of the table"):
        write_whole(target, lambda f: f.write(b"x"), "the table")
    assert (tmp_path / "afile").read_text() == "mine"
