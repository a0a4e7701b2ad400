"""Preset archives (`.tar`, `.tar.gz` / `.tgz`, `.zip`) extracted safely: every member checked before one is written."""

import os
import pathlib
import posixpath
import stat
import tarfile
import zipfile

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path):
    # By name; a preset directory that happens to be named `x.zip` stays a directory.
    return (
        isinstance(path, (str, os.PathLike))
        and os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)
        and not os.path.isdir(path)
    )


def _leaves(name):
    """Why the relative path `name` (a member's, or a link's target) could leave its folder, or None."""
    # PureWindowsPath splits on both "/" and "\\" and sees drives ("C:"),
    # so a name that is harmless on Linux but not elsewhere is refused too.
    posix, windows = pathlib.PurePosixPath(name), pathlib.PureWindowsPath(name)
    if posix.is_absolute() or windows.drive or windows.root:
        return "is an absolute path"
    if ".." in windows.parts:
        return "has a '..' component"
    return None


def _inside(path, root):
    return os.path.commonpath([os.path.realpath(path), root]) == root


def _check_member(archive, root, name, kind, link=None):
    """Raises `ValueError` unless the member `name` (`kind`; a link to `link`) lands inside `root`."""
    problem = _leaves(name)
    if problem is None and kind not in ("file", "folder", "symlink", "hard link"):
        problem = f"is a {kind}, not a file or folder"
    if problem is None and kind in ("symlink", "hard link"):
        # A symlink's target is relative to its folder, a hard link's to the
        # archive's root. Links may only point down (no `..`): `d -> .` and
        # `x -> d/..` each look inside, yet x would resolve above the root.
        if not link or _leaves(link):
            problem = f"is a {kind} to {link!r}, which may point outside the archive's folder"
        else:
            base = posixpath.dirname(name) if kind == "symlink" else ""
            link = posixpath.join(base, link)
    if problem is None and not all(_inside(os.path.join(root, p), root) for p in (name, link) if p):
        problem = "resolves outside the folder it is extracted into"
    if problem:
        raise ValueError(
            f"Refusing to extract the archive {archive}: its member {name!r} {problem}; "
            f"nothing was extracted. Received: member={name!r}"
        )


def _tar_kind(member):
    if member.isreg():
        return "file"
    if member.isdir():
        return "folder"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    return "fifo" if member.isfifo() else f"special member (tar type {member.type!r})"


def _zip_kind(info):
    # Unix zips keep the file mode in the top 16 bits of external_attr;
    # zipfile would write a link's target as a file's text, so a zip preset
    # holds plain files and folders only.
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: Unix
    if info.is_dir():
        return "folder"
    if not stat.S_IFMT(mode) or stat.S_ISREG(mode):
        return "file"
    return {stat.S_IFLNK: "symlink (kcl extracts none from zips)", stat.S_IFIFO: "fifo"}.get(
        stat.S_IFMT(mode), "device"
    )


def extract_archive(path, target):
    """Extracts a `.tar`, `.tar.gz` / `.tgz` or `.zip` archive into the new folder `target`, safely.

    Every member is checked before anything is written, and one that could
    land outside `target` is a `ValueError` naming the member and the
    archive: absolute paths (`/etc/x`, `C:\\x`), `..` components, paths
    resolving outside `target`, symlinks and hard links that are absolute
    or hold `..` (links may only point down, into the archive's folder),
    devices, fifos and other special members; zips hold files and folders
    only. Tar files are then extracted with `tarfile`'s `"data"` filter as
    a second guard (Python 3.10.12+ / 3.11.4+). No size limit is applied.

    Args:
        path: the archive file; the format follows its name.
        target: a folder that does not exist yet or is empty (so nothing
            already there, such as a symlink, can redirect a write).

    Returns:
        `target`, a `pathlib.Path`.

    Example:

    >>> kcl.archives.extract_archive("simclr_preset.tgz", "presets/simclr")
    PosixPath('presets/simclr')
    """
    archive = os.fspath(path)
    target = pathlib.Path(target)
    if not is_archive(archive):
        raise ValueError(f"A preset archive is a {', '.join(ARCHIVE_SUFFIXES)} file. Received: path={archive!r}")
    if not os.path.isfile(archive):
        raise ValueError(f"No such archive file. Received: path={archive!r}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"An archive is extracted into a new or empty folder. Received: target={str(target)!r}")
    root = os.path.realpath(target)
    try:
        if archive.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                members = zipped.infolist()
                for info in members:
                    _check_member(archive, root, info.filename, _zip_kind(info))
                target.mkdir(parents=True, exist_ok=True)
                zipped.extractall(root, members)
        else:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()  # reads the whole archive: every header, first
                for member in members:
                    _check_member(archive, root, member.name, _tar_kind(member), member.linkname or None)
                target.mkdir(parents=True, exist_ok=True)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(root, members, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: the checks above are the guard
                    tar.extractall(root, members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"Could not extract the archive {archive} ({type(error).__name__}: {error}); it may "
            f"be damaged or not a {', '.join(ARCHIVE_SUFFIXES)} file. Received: path={archive!r}"
        ) from None
    return target
