import io
import tarfile
import zipfile

import pytest

from transferflow.data.downloads import Checksum, extract
from transferflow.errors import DatasetError


def test_checksum_fragment_is_split_from_url():
    url, checksum = Checksum.from_fragment("https://h/x.tgz#sha256=" + "AB" * 32)
    assert url == "https://h/x.tgz" and checksum == Checksum("sha256", "ab" * 32)
    assert Checksum.from_fragment("https://h/x.tgz") == ("https://h/x.tgz", None)
    with pytest.raises(DatasetError, match="#sha256=<hex digest>"):
        Checksum.from_fragment("https://h/x.tgz#crc=1")
    with pytest.raises(DatasetError, match="a sha256 digest is 64 hex digits"):
        Checksum.from_fragment("https://h/x.tgz#sha256=abc123")


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_safe_tar_extracts(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [file_member("a/b.png")])
    out = extract(archive, tmp_path / "out")
    assert (out / "a" / "b.png").read_bytes() == b"x"


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png"])
def test_tar_with_escaping_path_is_refused(tmp_path, member):
    archive = make_tar(tmp_path / "bad.tar.gz", [file_member(member)])
    with pytest.raises(DatasetError, match="unsafe member path"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_with_symlink_is_refused(tmp_path):
    link = tarfile.TarInfo("a/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = make_tar(tmp_path / "bad.tar.gz", [(link, None)])
    with pytest.raises(DatasetError, match="is a link or device file"):
        extract(archive, tmp_path / "out")


def test_zip_bomb_limit(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bin", b"\0" * 100_000)
    with pytest.raises(DatasetError, match="unpacks to more than 1000 bytes"):
        extract(archive, tmp_path / "out", max_bytes=1000)


@pytest.mark.parametrize(("kind", "linkname"), [(tarfile.LNKTYPE, "../../etc/passwd"), (tarfile.CHRTYPE, ""),
                                               (tarfile.FIFOTYPE, ""), (tarfile.SYMTYPE, "../outside")])
def test_tar_links_and_devices_are_refused(tmp_path, kind, linkname):
    member = tarfile.TarInfo("a/special")
    member.type, member.linkname = kind, linkname
    archive = make_tar(tmp_path / "bad.tar", [file_member("a/ok.txt"), (member, None)])
    with pytest.raises(DatasetError, match="'a/special' is a link or device file"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_symlink_and_traversal_are_refused(tmp_path):
    link = zipfile.ZipInfo("a/link")
    link.external_attr = (0o120777 << 16)
    cases = (("link.zip", link, "is a symlink"), ("up.zip", "../evil.txt", "unsafe member"))
    for name, info, pattern in cases:
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(info, "/etc/passwd")
        with pytest.raises(DatasetError, match=pattern):
            extract(archive, tmp_path / "out")


def test_tar_bomb_limits_come_from_the_environment(tmp_path, monkeypatch):
    members = [file_member(f"a/f{i}.bin", b"\0" * 600) for i in range(3)]
    archive = make_tar(tmp_path / "bomb.tar.gz", members)
    monkeypatch.setenv("TRANSFERFLOW_MAX_EXTRACT_BYTES", "1000")
    with pytest.raises(DatasetError, match="more than 1000 bytes .*TRANSFERFLOW_MAX_EXTRACT_BYTES"):
        extract(archive, tmp_path / "out")
    monkeypatch.setenv("TRANSFERFLOW_MAX_EXTRACT_BYTES", "10000")
    monkeypatch.setenv("TRANSFERFLOW_MAX_EXTRACT_FILES", "2")
    with pytest.raises(DatasetError, match="3 members, more than the limit of 2"):
        extract(archive, tmp_path / "out")
    monkeypatch.delenv("TRANSFERFLOW_MAX_EXTRACT_FILES")
    assert len(list(extract(archive, tmp_path / "out").rglob("*.bin"))) == 3


def test_truncated_archive_is_a_clear_error(tmp_path):
    archive = make_tar(tmp_path / "t.tar.gz", [file_member("a/b.png", b"y" * 50_000)])
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        extract(archive, tmp_path / "out")


@pytest.mark.parametrize("name", ["../x.png", "/etc/x.png", "a/../../x.png"])
def test_object_names_cannot_escape_the_dataset_folder(tmp_path, name):
    from transferflow.data import safe_join

    with pytest.raises(DatasetError, match="outside the dataset folder"):
        safe_join(tmp_path, name, "s3://b/p/")
    assert safe_join(tmp_path, "cat/1.png", "s3://b/p/") == tmp_path / "cat" / "1.png"


def test_failed_extraction_leaves_no_staging_folder(tmp_path):
    archive = make_tar(tmp_path / "bad.tar.gz", [file_member("../evil.png")])
    with pytest.raises(DatasetError):
        extract(archive, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar.gz"]


def test_redact_hides_query_tokens():
    from transferflow.data.downloads import redact

    assert redact("https://h/x.tgz?X-Amz-Signature=abc") == "https://h/x.tgz?…"
    assert redact("https://h/x.tgz") == "https://h/x.tgz"


def test_unknown_host_fails_at_once_as_permanent(tmp_path, monkeypatch):
    from transferflow.data.downloads import download
    from transferflow.errors import PermanentDownloadError

    sleeps = []
    monkeypatch.setattr("transferflow.data.downloads.time.sleep", sleeps.append)
    with pytest.raises(PermanentDownloadError, match="cannot resolve host example.invalid: permanent, not "
                                                     "retried. Check the host name"):
        download("http://example.invalid/shapes.tar.gz", tmp_path / "shapes.tar.gz")
    assert sleeps == []  # not one retry, no backoff: it fails as fast as the DNS answers
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fault", "permanent"), [
    ("gaierror-noname", True), ("gaierror-again", False), ("http-404", True), ("http-403", True),
    ("http-429", False), ("http-408", False), ("http-503", False), ("reset", False), ("timeout", False),
])
def test_faults_are_sorted_into_permanent_and_transient(fault, permanent):
    import socket
    import urllib.error

    from transferflow.data.downloads import permanent_fault

    url = "https://data.example/x.tgz"
    exc = {
        "gaierror-noname": urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name not known")),
        "gaierror-again": urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure")),
        "reset": ConnectionResetError(104, "Connection reset by peer"),
        "timeout": urllib.error.URLError(TimeoutError("timed out")),
    }.get(fault) or urllib.error.HTTPError(url, int(fault[5:]), "reason", {}, None)
    assert (permanent_fault(url, exc) is not None) == permanent


def test_retry_condition_does_not_retry_permanent_faults():
    """The Prefect task-level retry (tasks.policies) on a real failed State."""
    from prefect.states import Failed

    from transferflow.errors import (
        ChecksumError,
        DownloadError,
        PermanentChecksumError,
        PermanentDownloadError,
        StorageError,
    )
    from transferflow_tasks.policies import retry_transient

    def retried(exc: Exception) -> bool:
        return retry_transient(None, None, Failed(data=exc))

    assert not retried(PermanentDownloadError("download of x failed: cannot resolve host h: permanent"))
    assert not retried(PermanentChecksumError("checksum mismatch … on two downloads: permanent"))
    assert not retried(DatasetError("dataset x does not exist"))
    assert retried(DownloadError("download of x failed after 4 attempts (transient, retried)"))
    assert retried(ChecksumError("the bytes differ on each download"))
    assert retried(StorageError("cannot reach object storage"))
