"""Hub calls that never leak the access token.

The token comes from the usual places, in huggingface_hub's own order (``HF_TOKEN``, then the login stored
by ``hf auth login``) or from the caller. It is passed to huggingface_hub and nowhere else: facekit never
logs it, and every exception a Hub call raises is replaced by a :class:`HubError` whose message has the
token (and anything shaped like a Hub token) redacted and which carries no reference to the original
exception (no ``__cause__`` / ``__context__``), so a traceback cannot print it either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Hub user access tokens (``hf_`` + 34 letters/digits today); redacted even when not the caller's.
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{16,}")
REDACTED = "***"


class HubError(RuntimeError):
    """A Hub call failed; the message is redacted. ``transient``: worth retrying (network, 429, 5xx)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def redact(text: str, token: str | None = None) -> str:
    """``text`` with ``token`` and anything shaped like a Hub token replaced by ``***``."""
    if token:
        text = text.replace(token, REDACTED)
    return TOKEN_PATTERN.sub(REDACTED, text)


def resolve_token(token: str | None = None) -> str:
    """The caller's token, else huggingface_hub's lookup (``HF_TOKEN``, the stored login); never logged."""
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (the token is never logged)")
    return token


def is_transient(error: BaseException) -> bool:
    """True for failures that a later attempt may not meet: connection and timeout errors, HTTP 429 and 5xx."""
    if isinstance(error, OfflineModeIsEnabled):
        return False
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return isinstance(error, (ConnectionError, TimeoutError, HTTPError))


def hub_call(action: str, token: str | None, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; any exception becomes a redacted :class:`HubError` naming ``action``."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        message = redact(f"{action} failed: {type(e).__name__}: {e}", token)
        transient = is_transient(e)
    # raised outside the except block: the new error holds no reference to the original one
    raise HubError(message, transient=transient)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``owner/name``; ValueError naming it otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {e}") from None
    if "/" not in repo_id:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: expected 'owner/name'")
    return repo_id


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    repo_type: str,
    private: bool,
    allow_patterns: Sequence[str],
    delete_patterns: Sequence[str] = (),
    commit_message: str,
    api: HfApi | None = None,
    token: str | None = None,
) -> str:
    """Create ``repo_id`` (if missing) and upload the files of ``folder`` matching ``allow_patterns``.

    Remote files matching ``delete_patterns`` and not uploaded now are deleted in the same commit (e.g.
    Parquet shards left by an earlier, larger upload). ``private`` applies when the repo is created; an
    existing repo keeps its visibility. Returns the repo URL.
    """
    check_repo_id(repo_id)
    token = resolve_token(token)
    api = api or HfApi()
    log.info("creating %s repo %s (private=%s) if missing", repo_type, repo_id, private)
    url = hub_call(
        f"create {repo_type} repo {repo_id}",
        token,
        api.create_repo,
        repo_id=repo_id,
        repo_type=repo_type,
        private=private,
        exist_ok=True,
        token=token,
    )
    log.info("uploading %s to %s", folder, repo_id)
    hub_call(
        f"upload {folder} to {repo_id}",
        token,
        api.upload_folder,
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=folder,
        allow_patterns=list(allow_patterns),
        delete_patterns=list(delete_patterns),
        commit_message=commit_message,
        token=token,
    )
    return str(url)
