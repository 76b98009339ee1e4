"""Keep the member lists of an archive on disk, so each part of it is scanned once.

Scanning the 50,000 headers of the val tar, or the 1,300 of a class tar inside
the train tar, costs seconds on a disk that must seek to each; the lists are
kept in a small folder per archive, and the next build (of any subset) reads
them instead::

    <index_dir>/<archive file name>.<12 hex digits: sha1 of its absolute path>/
        archive.json      {"format": 1, "archive": path, "size": bytes, "mtime_ns": int}
        <group>.tsv       one list of members, in archive order, a line each:
                          path TAB offset TAB size TAB method TAB crc32 TAB file_size
                          (the ``archives.Member`` fields: path as a JSON string, so
                          any name fits on one line; crc32 and file_size empty for
                          tar members)
        groups.txt        for an archive scanned whole (a zip): every group, one per line

A group is a part of an archive scanned at once: the outer train tar (its class
tars), one class tar, the val tar, or one folder of a zip. Its file name is the
first 16 hex digits of the SHA-1 of its name. When the archive's size or
modification time differ from ``archive.json``, the folder is emptied and the
lists are made again. Every file is written under a temporary name and renamed
into place (a scan's unfinished lists carry its process id and a random token),
so two builds sharing an index never read half a list nor write into each
other's. When the index folder cannot be written, lists are kept in memory for
this run only.
"""
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .archives import Member

log = logging.getLogger("packer")

INDEX_FORMAT = 1


def _group_file(group: str) -> str:
    return hashlib.sha1(group.encode()).hexdigest()[:16] + ".tsv"


def _member_line(member: Member) -> str:
    crc = "" if member.crc32 is None else str(member.crc32)
    file_size = "" if member.file_size is None else str(member.file_size)
    return f"{json.dumps(member.path)}\t{member.offset}\t{member.size}\t{member.method}\t{crc}\t{file_size}\n"


def _member_of_line(archive: str, line: str) -> Member:
    path, offset, size, method, crc, file_size = line.rstrip("\n").split("\t")
    return Member(archive, json.loads(path), int(offset), int(size), int(method), int(crc) if crc else None,
                  int(file_size) if file_size else None)


class ArchiveIndex:
    """The kept member lists of ``archive`` in ``index_dir`` (None: keep nothing on disk)."""

    def __init__(self, archive: str, index_dir: str | os.PathLike | None):
        self.archive = archive
        self.memory: dict[str, list[Member]] = {}
        self.folder: Path | None = None
        self._group_names: list[str] | None = None  # of an archive scanned whole, once known
        if index_dir is not None:
            digest = hashlib.sha1(os.path.abspath(archive).encode()).hexdigest()[:12]
            self.folder = self._prepared(Path(index_dir) / f"{os.path.basename(archive)}.{digest}")

    def _identity(self) -> dict:
        stat = os.stat(self.archive)
        return {"format": INDEX_FORMAT, "archive": os.path.abspath(self.archive), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}

    def _prepared(self, folder: Path) -> Path | None:
        """``folder``, emptied when it describes another state of the archive; None if unwritable."""
        identity = self._identity()
        try:
            try:
                if json.loads((folder / "archive.json").read_text()) == identity:
                    return folder
            except (OSError, ValueError):
                pass
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                old.unlink(missing_ok=True)
            self._write(folder / "archive.json", json.dumps(identity) + "\n")
            return folder
        except OSError as exc:
            log.warning("note: cannot keep the member index of %s in %s (%s); it is scanned again next time",
                        self.archive, folder, exc.strerror)
            return None

    @staticmethod
    def _write(path: Path, text_or_lines: str | Iterable[str]) -> None:
        temporary = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as f:
                f.writelines([text_or_lines] if isinstance(text_or_lines, str) else text_or_lines)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    def _read_group(self, group: str) -> list[Member] | None:
        if group in self.memory:
            return self.memory[group]
        if self.folder is None:
            return None
        try:
            with open(self.folder / _group_file(group), encoding="utf-8") as f:
                return [_member_of_line(self.archive, line) for line in f]
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a damaged list: scan again
            return None

    def members(self, group: str, scan: Callable[[], Iterable[Member]]) -> list[Member]:
        """The members of ``group``: the kept list, or ``scan()`` (then kept)."""
        kept = self._read_group(group)
        if kept is not None:
            return kept
        members = list(scan())
        self._keep(group, members)
        return members

    def _keep(self, group: str, members: list[Member]) -> None:
        if self.folder is not None:
            try:
                self._write(self.folder / _group_file(group), (_member_line(m) for m in members))
                return
            except OSError as exc:
                log.warning("note: cannot write the member index in %s (%s)", self.folder, exc.strerror)
                self.folder = None
        self.memory[group] = members

    def group(self, group: str, scan: Callable[[], Iterable[tuple[str, Member]]]) -> list[Member]:
        """The members of ``group`` of an archive scanned whole by ``scan`` (see ``groups``); when
        its kept list is missing or damaged, the whole archive is scanned again."""
        kept = self._read_group(group)
        if kept is None:
            if self.folder is not None:
                (self.folder / "groups.txt").unlink(missing_ok=True)
            self.memory.clear()
            self._group_names = None
            kept = self._read_group(group) if group in self.groups(scan) else None
        return kept or []

    def groups(self, scan: Callable[[], Iterable[tuple[str, Member]]]) -> list[str]:
        """Every group of an archive scanned whole (``scan`` yields ``(group, member)``), sorted;
        the first call scans and keeps them all, later ones (and later builds) read the names.
        A group's lines are appended to its file whenever the scan moves to another group, so
        memory stays small for an archive of millions of members stored folder by folder."""
        if self._group_names is None:
            self._group_names = self._scanned_groups(scan)
        return self._group_names

    def _scanned_groups(self, scan: Callable[[], Iterable[tuple[str, Member]]]) -> list[str]:
        if self.folder is not None:
            try:
                names = (self.folder / "groups.txt").read_text(encoding="utf-8").splitlines()
                if all((self.folder / _group_file(group)).is_file() for group in names):
                    return names
            except OSError:
                pass
        elif self.memory:
            return sorted(self.memory)
        folder = self.folder
        scanned: set[str] = set()
        current, pending = "", list[Member]()
        building = f".building-{os.getpid()}-{secrets.token_hex(4)}-"  # this scan's own files

        def put_aside() -> None:
            if folder is None:
                self.memory.setdefault(current, []).extend(pending)
            elif pending:
                with open(folder / (building + _group_file(current)), "a", encoding="utf-8") as f:
                    f.writelines(_member_line(m) for m in pending)

        try:
            for group, member in scan():
                if group != current:
                    put_aside()
                    current, pending = group, []
                scanned.add(group)
                pending.append(member)
            put_aside()
            if folder is not None:
                for group in scanned:
                    os.replace(folder / (building + _group_file(group)), folder / _group_file(group))
                self._write(folder / "groups.txt", "".join(f"{g}\n" for g in sorted(scanned)))
        except OSError as exc:
            log.warning("note: cannot write the member index in %s (%s)", folder, exc.strerror)
            self.folder = None
            return self._scanned_groups(scan)
        finally:
            if folder is not None:
                for leftover in folder.glob(building + "*"):
                    leftover.unlink(missing_ok=True)
        return sorted(scanned)
