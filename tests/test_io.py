"""advbench.io: atomic writes that follow the umask, name the path on a full or read-only disk,
never leave a partial file, never replace a file advbench did not write, suite paths that
cannot leave the project's folders, and run tables read as untrusted input (no symbolic links,
no gzip bombs)."""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import stat
from pathlib import Path

import pytest

import advbench.io as io_module
from advbench.errors import AdvbenchError
from advbench.io import (
    DiskFullError,
    FileWriteError,
    OverwriteRefusedError,
    UnsafePathError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_text,
    check_suite_path,
    generated_marker,
    is_generated_file,
    read_run_table,
    relative_to_project,
    suite_path_problems,
    write_generated_text,
)

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "advbench-tmp" in p.name)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    os.chmod(target, 0o644)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o640)
    atomic_write_text(target, "newer")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "newer"


@pytest.mark.parametrize(
    ("err", "cls", "words"),
    [
        (errno.ENOSPC, DiskFullError, "is full"),
        (getattr(errno, "EDQUOT", errno.ENOSPC), DiskFullError, "is full"),
        (errno.EROFS, FileWriteError, "read-only"),
        (errno.EACCES, FileWriteError, "permission denied"),
        (errno.EPERM, FileWriteError, "permission denied"),
    ],
)
@pytest.mark.parametrize("stage", ["open", "fsync", "replace"])
def test_write_errors_name_the_path_and_leave_the_old_file(tmp_path, monkeypatch, err, cls, words, stage):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "old")

    def boom(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    if stage == "open":
        monkeypatch.setattr(io_module, "_open_temp", boom)
    else:
        monkeypatch.setattr(io_module.os, stage, boom)
    with pytest.raises(cls) as info:
        atomic_write_text(target, "new" * 1000, what="the run manifest")
    monkeypatch.undo()
    msg = str(info.value)
    assert str(target) in msg and words in msg and "To fix" in msg
    assert isinstance(info.value, AdvbenchError) and isinstance(info.value, OSError)
    assert info.value.errno == (errno.ENOSPC if cls is DiskFullError else err)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_in_the_block_publishes_nothing(tmp_path):
    target = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the library failed")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_atomic_path_maps_a_library_disk_full_message(tmp_path):
    target = tmp_path / "x.safetensors"
    with pytest.raises(DiskFullError), atomic_path(target):
        raise RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_real_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(FileWriteError, match="not writable"):
            atomic_write_bytes(folder / "a.bin", b"x")
    finally:
        os.chmod(folder, 0o755)


def test_the_temporary_file_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    monkeypatch.setattr(io_module.secrets, "token_hex", lambda n: "fixed")
    (tmp_path / "dir").mkdir()
    os.symlink(outside, tmp_path / "dir" / ".a.txt.advbench-tmp-fixed")
    with pytest.raises(FileExistsError):  # O_EXCL: the name is taken, and it is never written through
        atomic_write_text(tmp_path / "dir" / "a.txt", "attacker-controlled")
    assert outside.read_text() == "precious"


# -- a full disk --------------------------------------------------------------------------------


def _enospc(path: object = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_error_pickles_for_workers():
    err = DiskFullError("the cache disk at /c is full", path="/c", nbytes=12)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DiskFullError) and str(back) == str(err)
    assert back.nbytes == 12 and back.errno == errno.ENOSPC


def test_atomic_write_text_enospc_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "run" / "manifest.json"
    atomic_write_text(target, '{"old": true}')
    real_fsync = os.fsync

    def full_fsync(fd):
        raise _enospc()

    monkeypatch.setattr(io_module.os, "fsync", full_fsync)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(target, '{"new": true}' * 100)
    monkeypatch.setattr(io_module.os, "fsync", real_fsync)
    message = str(info.value)
    assert f"the disk holding {target} is full" in message and "1,300 bytes" in message and "free space" in message
    assert target.read_text() == '{"old": true}'  # never a mix of old and new
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]  # temporary file removed
    atomic_write_text(target, '{"new": true}')  # space freed
    assert target.read_text() == '{"new": true}'


# -- never overwrite a file advbench did not write ----------------------------------------------


def test_generated_report_can_be_rewritten(tmp_path):
    report = tmp_path / "report.md"
    write_generated_text(report, "# Report\n")
    assert report.read_text().startswith(generated_marker(report)) and is_generated_file(report)
    write_generated_text(report, "# Report v2\n")
    assert report.read_text().endswith("# Report v2\n")


@pytest.mark.parametrize(
    "content",
    [
        "# My notes\n",  # a user's file
        "name: quick\nseeds: [0]\n",  # a suite overwriting itself
        "import os; os.system('echo pwned')\n",  # the .pth example, as Markdown name
        "\n<!-- generated by advbench: do not edit -->\n",  # the marker, but not on the first line
        "",  # an empty file is someone's file too
    ],
)
def test_a_file_advbench_did_not_write_is_never_replaced(tmp_path, content):
    target = tmp_path / "README.md"
    target.write_text(content)
    before = target.stat()
    with pytest.raises(OverwriteRefusedError, match="did not write it"):
        write_generated_text(target, "# Report\n")
    assert target.read_text() == content and target.stat().st_mtime_ns == before.st_mtime_ns


def test_symlinks_folders_and_unmarkable_types_are_refused(tmp_path):
    real = tmp_path / "real.md"
    write_generated_text(real, "x")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    with pytest.raises(OverwriteRefusedError, match="symlink"):
        write_generated_text(link, "y")
    (tmp_path / "dir.md").mkdir()
    with pytest.raises(OverwriteRefusedError, match="not a regular file"):
        write_generated_text(tmp_path / "dir.md", "y")
    with pytest.raises(ValueError, match="cannot mark"):
        write_generated_text(tmp_path / "evil.pth", "import os")
    assert not (tmp_path / "evil.pth").exists()


def test_marker_is_in_the_file_types_comment_syntax():
    assert generated_marker("a.md").startswith("<!-- ") and generated_marker("a.md").endswith(" -->\n")
    assert generated_marker("a.yaml").startswith("# ")


def test_the_committed_report_is_advbenchs_own():
    assert is_generated_file(ROOT / "reports" / "transfer.md")


# -- paths from suite files ---------------------------------------------------------------------


@pytest.fixture
def project(tmp_path):
    for d in ("runs", "reports", ".cache"):
        (tmp_path / d).mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/etc/passwd", "absolute"),
        ("/", "absolute"),
        ("../outside.md", "'..'"),
        ("reports/../../x.md", "'..'"),
        ("reports\\..\\..\\x.md", "'..'"),
        ("~/report.md", "'~'"),
        ("", "empty"),
        ("   ", "empty"),
        ("reports/a\x00b.md", "NUL"),
        ("C:report.md", "absolute"),
        ("src/thing.md", "outside the allowed folders"),
        ("README.md", "outside the allowed folders"),
        (42, "expected a relative path"),
    ],
)
def test_suite_paths_refused(project, value, words):
    problems = suite_path_problems(value, field="report.output", allowed_roots=["runs", "reports"], base=project)
    assert len(problems) == 1 and words in problems[0] and "report.output" in problems[0]
    with pytest.raises(UnsafePathError):
        check_suite_path(value, field="report.output", allowed_roots=["runs", "reports"], base=project)


def test_a_symlink_out_of_the_tree_is_refused(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (project / "reports" / "out").symlink_to(elsewhere)
    problems = suite_path_problems("reports/out/r.md", field="report.output", allowed_roots=["reports"], base=project)
    assert problems and "symlink" in problems[0]
    (project / "reports" / "inside").symlink_to(project / "runs")  # a link that stays inside is fine
    assert not suite_path_problems("reports/inside/r.md", field="f", allowed_roots=["reports", "runs"], base=project)


def test_safe_paths_resolve(project):
    got = check_suite_path("reports/quick.md", field="report.output", allowed_roots=["reports"], base=project)
    assert got == (project / "reports" / "quick.md").resolve()
    assert not suite_path_problems("reports", field="f", allowed_roots=["reports"], base=project)
    assert not suite_path_problems(".cache/cells", field="cache_dir", allowed_roots=[".cache"], base=project)


def test_relative_to_project(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert relative_to_project(tmp_path / "runs" / "a", tmp_path) == "runs/a"
    assert relative_to_project("runs/a", tmp_path) == "runs/a"
    assert relative_to_project(tmp_path, tmp_path) == "."
    out = relative_to_project("/home/someone/.cache/advbench/cells", tmp_path)
    assert out == "<outside project>/cells" and "/home" not in out


def test_a_gzipped_csv_is_the_same_bytes_every_time_and_reads_back(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": [0.1 + 0.2, float("nan")], "c": ["x", "y,z"]})
    atomic_write_csv(frame, tmp_path / "one.csv.gz", what="a table")
    atomic_write_csv(frame, tmp_path / "two.csv.gz", what="a table")
    one = (tmp_path / "one.csv.gz").read_bytes()
    assert one == (tmp_path / "two.csv.gz").read_bytes()  # no file name, no time in the header
    assert one[3] & 0x08 == 0 and one[4:8] == b"\0\0\0\0"
    atomic_write_csv(frame, tmp_path / "plain.csv", what="a table")
    assert gzip.decompress(one) == (tmp_path / "plain.csv").read_bytes() == frame.to_csv(index=False).encode()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one.csv.gz"), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv.gz", "plain.csv", "two.csv.gz"]


# -- run folders are read as untrusted input -------------------------------------------------------


def test_a_symlinked_table_is_refused_not_followed(tmp_path):
    import pandas as pd

    secret = tmp_path / "secret.txt"
    secret.write_text("name\nroot:x:0:0\n")
    link = tmp_path / "claims.csv"
    link.symlink_to(secret)
    with pytest.raises(AdvbenchError, match="symbolic link") as err:
        read_run_table(link)
    assert "root:x" not in str(err.value)
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(plain, index=False)
    assert read_run_table(plain)["a"].tolist() == [1, 2]


def test_a_gzip_bomb_is_refused_before_it_fills_the_memory(tmp_path):
    import pandas as pd

    bomb = tmp_path / "outcomes.csv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(b"a\n")
        chunk = b"0\n" * (1 << 20)
        for _ in range(80):  # 160 MiB of zeros, a few hundred KiB compressed
            fh.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(AdvbenchError, match="expands to more than 64 MiB"):
        read_run_table(bomb)
    fine = tmp_path / "fine.csv.gz"
    pd.DataFrame({"a": range(1000)}).to_csv(fine, index=False)
    assert len(read_run_table(fine)) == 1000
