"""Fetching one file: plain HTTP(S) with resume and progress, or a Hugging Face hub file; the
content is checked against its pinned sha256 before it is used.

Example:
    >>> fetcher = Fetcher(Path("data/cirr/.cir-download"))
    >>> path = fetcher.fetch(item)       # a verified file in the staging folder
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from cir import __version__
from cir._paths import file_sha256
from cir.bench.download.sources import Item
from cir.errors import DataError

CHUNK = 1 << 16
#: HTTP statuses that mean the file is not there (retrying will not help).
GONE = (401, 403, 404, 410, 451)


class NotFound(DataError):
    """The server or hub answered that the file does not exist."""


@dataclass
class Fetcher:
    """Fetches source items into ``staging`` (inside the dataset folder).

    Attributes:
        staging: where partial and finished downloads live until they are placed.
        mirror: fetch ``https://host/path`` as ``<mirror>/host/path`` instead.
        hub: the source's hub repository (``{repo, revision}``) for items given by ``path``.
        hub_endpoint: the hub's address (default: huggingface_hub's, which honours HF_ENDPOINT).
        retries: how often an interrupted transfer is resumed before giving up.
    """

    staging: Path
    mirror: str | None = None
    hub: dict[str, str] | None = None
    hub_endpoint: str | None = None
    retries: int = 3
    timeout: float = 60.0
    progress: bool = True

    def fetch(self, item: Item) -> Path:
        """The item's file, downloaded (or resumed) into the staging folder and verified."""
        name = hashlib.sha256(item.label.encode()).hexdigest()[:12] + "-" + item.file_name
        if item.path is not None:
            path = self._hub(item.path)
        else:
            path = self.http(item.url, self.staging / "files" / name)
        check_sha256(path, item.sha256, item.label)
        return path

    def resolve(self, url: str) -> str:
        """The URL actually requested (rewritten through the mirror when one is set)."""
        if not self.mirror:
            return url
        parts = urlsplit(url)
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.mirror.rstrip('/')}/{parts.netloc}{parts.path}{query}"

    def http(self, url: str, dest: Path, retries: int | None = None, bar: bool = True) -> Path:
        """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions
        (``bar=False``: no byte progress bar, for the many small files of an image list)."""
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        tries = self.retries if retries is None else retries
        for attempt in range(tries + 1):
            try:
                self._transfer(self.resolve(url), part, url, bar)
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and part.is_file():  # nothing left to send: already whole
                    break
                if exc.code in GONE:
                    raise NotFound(
                        f"{url}: the server answered {exc.code} ({exc.reason})"
                    ) from None
                failure = f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                failure = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if attempt == tries:
                kept = part.stat().st_size if part.is_file() else 0
                raise DataError(
                    f"download of {url} failed ({failure}); {kept} bytes are kept in {part}: "
                    "run the same command again to resume"
                )
        os.replace(part, dest)
        return dest

    def _transfer(self, url: str, part: Path, label: str, bar: bool) -> None:
        start = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": f"cir/{__version__}"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if start and response.status != 206:
                start = 0  # the server ignored the range: start again
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            name = Path(urlsplit(label).path).name
            with (
                part.open("ab" if start else "wb") as out,
                tqdm(total=total, initial=start, unit="B", unit_scale=True, leave=False,
                     desc=name, disable=not (self.progress and bar)) as shown,
            ):  # fmt: skip
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    shown.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)

    def _hub(self, path: str) -> Path:
        """A file of the source's hub dataset repository (huggingface_hub resumes and caches)."""
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import hf_hub_download

        repo = self.hub["repo"]
        revision = self.hub.get("revision") or "main"
        absent = tuple(
            getattr(hub_errors, name)
            for name in ("RemoteEntryNotFoundError", "RepositoryNotFoundError",
                         "RevisionNotFoundError")
            if hasattr(hub_errors, name)
        )  # fmt: skip
        try:
            local = hf_hub_download(
                repo_id=repo, filename=path, repo_type="dataset", revision=revision,
                endpoint=self.hub_endpoint, local_dir=self.staging / "hub" / repo,
                tqdm_class=None if self.progress else _Silent,
            )  # fmt: skip
        except hub_errors.LocalEntryNotFoundError as exc:  # the hub could not be reached
            raise DataError(
                f"could not reach the hub for {repo}/{path} ({_first_line(exc)}); run the same "
                "command again to resume"
            ) from None
        except absent as exc:
            raise NotFound(
                f"hub dataset {repo}@{revision} has no {path} ({_first_line(exc)})"
            ) from None
        except (hub_errors.HfHubHTTPError, OSError) as exc:
            raise DataError(
                f"could not fetch {path} from the hub dataset {repo} ({_first_line(exc)}); run "
                "the same command again to resume"
            ) from None
        return Path(local)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Silent(tqdm):
    """A progress bar that never shows (for ``progress=False``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def check_sha256(path: Path, expected: str | None, label: str) -> str:
    """The file's sha256; when ``expected`` is given and differs, the file is deleted (cir
    fetched it) and a DataError says so."""
    actual = file_sha256(path)
    if expected and actual != expected.lower():
        path.unlink(missing_ok=True)
        raise DataError(
            f"{label}: sha256 mismatch (expected {expected}, got {actual}); the download was "
            "deleted. The file changed at its source or was corrupted on the way: run again, "
            "or choose another --source"
        )
    return actual
