"""Check which manifest files are present, and download the missing ones from the Hugging Face Hub.

huggingface_hub is optional: it is imported only when something is downloaded. It resolves the endpoint (HF_ENDPOINT,
read at call time so tests and mirrors can redirect it), the token (HF_TOKEN or `hf auth login`) and redirects,
and streams the bytes (retrying with a Range request inside one run).

Why not hf_hub_download: since huggingface_hub 2.x it deletes its partial file when a download fails, so a 3 GB
download cut at 90% starts again from zero. Here the bytes go to a stable hidden name in the target folder
(`.<name>.<etag>.part`), which the next run continues with a Range request. The file is checked (size, sha256) and
only then renamed to its final name with os.replace, so nothing half-written ever carries a model's name.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .model_manifest import SVD_LICENCE_URL, ModelFile, format_size

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 8 * 1024 * 1024


class ModelDownloadError(RuntimeError):
    """A file could not be downloaded (network, missing package, not on the Hub)."""


class ModelAccessError(ModelDownloadError):
    """The Hub refused access (401/403): a gated repository or a missing/invalid token."""


class ModelFileMismatch(ModelDownloadError):
    """A downloaded file does not have the published size or hash; it was deleted."""


@dataclass
class FileStatus:
    file: ModelFile
    path: str  # where it is (if present) or where it goes
    state: str  # "present", "missing", "wrong size", "wrong hash"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "present"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: str, f: ModelFile, size: int | None, sha256: str | None, check_hash: bool) -> tuple[str, str]:
    """(state, detail) of an existing file against the known size and (optionally) hash or hash prefix."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return "wrong size", f"{actual} bytes, expected {size}"
    if check_hash and sha256:
        digest = sha256_of(path)
        if not digest.startswith(sha256.lower()):
            return "wrong hash", f"sha256 {digest}, expected {sha256}"
    return "present", f"{actual} bytes"


def check_files(files: list[ModelFile], folder_for: Callable[[str], str],
                find_existing: Callable[[ModelFile], str | None] | None = None,
                check_hash: bool = False) -> list[FileStatus]:
    """Status of each file. `folder_for(folder_name)` is where files go; `find_existing` may locate a file elsewhere
    (e.g. an extra_model_paths.yaml folder). Sizes are always compared when known; hashes only with check_hash."""
    result = []
    for f in files:
        target = os.path.join(folder_for(f.folder), f.name)
        path = find_existing(f) if find_existing is not None else None
        path = path or target
        if not os.path.isfile(path):
            result.append(FileStatus(f, target, "missing"))
            continue
        state, detail = _verify(path, f, f.size, f.sha256, check_hash)
        result.append(FileStatus(f, path, state, detail))
    return result


def _hub() -> tuple:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError as e:
        raise ModelDownloadError(
            "Downloading needs the huggingface_hub package, which is not installed: pip install huggingface_hub "
            f"(into ComfyUI's Python), or download the files by hand from the pages listed by --list. ({e})") from e
    return get_hf_file_metadata, hf_hub_url, HfHubHTTPError, OfflineModeIsEnabled, http_get, build_hf_headers


def _access_message(f: ModelFile, status: int, token: str | None) -> str:
    have_token = bool(token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if f.gated:
        return (f"Access to {f.repo_id}/{f.filename} was denied (HTTP {status}): SVD 1.1 is gated. Accept the licence "
                f"at {SVD_LICENCE_URL} and set HF_TOKEN to a token of that account"
                + (" (a token is set, but its account has not accepted the licence, or it is invalid)." if have_token
                   else " (no token is set)."))
    return (f"Access to {f.repo_id}/{f.filename} was denied (HTTP {status}). Check HF_TOKEN"
            + (" (the one set may be invalid)." if have_token else " (none is set) or log in with `hf auth login`."))


def download_file(f: ModelFile, dest_dir: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """Download one file into dest_dir/f.name (resuming a previous partial download), verify it, return its path.

    Raises ModelAccessError on 401/403, ModelFileMismatch when size or hash differ (the partial file is deleted),
    ModelDownloadError on other failures (the partial file is kept so the next run resumes)."""
    get_meta, hub_url, HfHubHTTPError, OfflineModeIsEnabled, http_get, build_headers = _hub()
    import httpx2  # a huggingface_hub dependency (its HTTP client); imported only when downloading

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    url = hub_url(f.repo_id, f.filename, revision=f.revision, endpoint=endpoint)
    try:
        meta = get_meta(url, token=token, endpoint=endpoint)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise ModelAccessError(_access_message(f, status, token)) from e
        raise ModelDownloadError(f"{f.repo_id}/{f.filename} could not be found on {endpoint or 'the Hub'} "
                                 f"(HTTP {status}): {e}") from e
    except (httpx2.HTTPError, OfflineModeIsEnabled) as e:
        raise ModelDownloadError(f"Cannot reach {url}: {e}") from e

    size = f.size if f.size is not None else meta.size
    if f.size is not None and meta.size is not None and meta.size != f.size:
        raise ModelFileMismatch(f"{f.repo_id}/{f.filename} on the Hub is {meta.size} bytes, but the pack expects "
                                f"{f.size} (the published file changed?). Nothing was downloaded.")
    # The Hub's etag of an LFS file is its sha256: a full check for files the manifest has no hash for.
    etag = (meta.etag or "").lower()
    expected_sha = f.sha256 or (etag if _SHA256.fullmatch(etag) else None)

    os.makedirs(dest_dir, exist_ok=True)
    final = os.path.join(dest_dir, f.name)
    part = os.path.join(dest_dir, f".{f.name}.{re.sub(r'[^0-9A-Za-z]', '', etag)[:16] or 'noetag'}.part")
    for stale in glob.glob(os.path.join(glob.escape(dest_dir), f".{glob.escape(f.name)}.*.part")):
        if stale != part:  # a partial download of an older version of the file
            os.remove(stale)

    headers = build_headers(token=token)
    headers["Accept-Encoding"] = "identity"  # byte ranges must count the real bytes
    download_url = meta.location or url
    if urlsplit(download_url).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN url: do not send the token elsewhere
    resume = os.path.getsize(part) if os.path.isfile(part) else 0
    if size is not None and resume > size:
        os.remove(part)
        resume = 0
    try:
        with open(part, "ab") as out:
            http_get(download_url, out, resume_size=resume, headers=headers, expected_size=size,
                     displayed_filename=f.name)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise ModelAccessError(_access_message(f, status, token)) from e
        raise ModelDownloadError(_interrupted(f, part, e)) from e
    except (httpx2.HTTPError, OSError) as e:
        raise ModelDownloadError(_interrupted(f, part, e)) from e

    state, detail = _verify(part, f, size, expected_sha, check_hash=True)
    if state != "present":
        os.remove(part)
        raise ModelFileMismatch(f"The download of {f.repo_id}/{f.filename} has the {state} ({detail}); it was "
                                f"deleted and {final} was not written. Run the command again; if it keeps failing, "
                                f"download the file by hand from {f.url}.")
    os.replace(part, final)
    return final


def _interrupted(f: ModelFile, part: str, error: BaseException) -> str:
    kept = os.path.getsize(part) if os.path.isfile(part) else 0
    return (f"The download of {f.repo_id}/{f.filename} was interrupted ({error}). {kept} bytes are kept in {part}; "
            "run the same command again to resume.")


def setup_files(files: list[ModelFile], folder_for: Callable[[str], str], *, download: bool,
                find_existing: Callable[[ModelFile], str | None] | None = None, token: str | None = None,
                endpoint: str | None = None, log: Callable[[str], None] = print) -> tuple[list[FileStatus], list[str]]:
    """Check the files and (with download=True) fetch the missing or wrong ones. Returns the final statuses and the
    error messages of files that could not be fetched; one failure does not stop the others."""
    statuses = check_files(files, folder_for, find_existing)
    errors: list[str] = []
    if not download:
        return statuses, errors
    for i, st in enumerate(statuses):
        if st.ok:
            continue
        f = st.file
        if st.state != "missing":
            log(f"{f.name}: {st.state} ({st.detail}); downloading it again")
        log(f"Downloading {f.repo_id}/{f.filename} ({format_size(f.size)}) -> {folder_for(f.folder)}")
        try:
            path = download_file(f, folder_for(f.folder), token=token, endpoint=endpoint)
        except ModelDownloadError as e:
            errors.append(str(e))
            log(f"ERROR: {e}")
            continue
        statuses[i] = FileStatus(f, path, "present", f"{os.path.getsize(path)} bytes, downloaded")
    return statuses, errors


def format_report(statuses: list[FileStatus], errors: list[str] | None = None) -> str:
    lines = []
    for st in statuses:
        mark = "ok     " if st.ok else f"{st.state.upper():7s}"
        extra = f" ({st.detail})" if st.detail else ""
        lines.append(f"[{mark}] {st.file.folder}/{st.file.name}{extra} <- {st.file.repo_id}/{st.file.filename}")
    missing = sum(not st.ok for st in statuses)
    lines.append(f"{len(statuses) - missing} of {len(statuses)} files present"
                 + (f"; {missing} missing or wrong" if missing else ""))
    lines.extend(f"ERROR: {e}" for e in errors or [])
    return "\n".join(lines)
