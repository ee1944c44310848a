"""Blob upload sessions: which repository each upload in progress belongs to,
whether it is being completed, and their expiry.

The bytes of an upload live in the store's ``UploadArea``; a session is what
the registry API adds on top: the repository the upload was started in (an
upload id is only valid under that name), when it started (for the "pushed
in" log line), and a ``finishing`` flag that refuses a PATCH, DELETE or
second PUT while a PUT completes it. A session goes with its upload: when
the area has lost the upload (deleted, expired, full disk), the session is
forgotten and the client gets BLOB_UPLOAD_UNKNOWN.

Limits (``UploadLimits``, all off by default; the proxy sets them from its
``limits:`` config): sessions open at once, in all and per client address
(one more is 429 TOOMANYREQUESTS with ``Retry-After``), and the largest blob
(``http_uploads`` refuses an upload over it with 413 SIZE_INVALID). Sessions
untouched for the upload TTL go with their uploads (``expire``).

A read-only registry (the agent) has no upload area; its sessions are always
empty and ``area()`` refuses with the read-only message (writes are refused
before a handler runs anyway).
"""

from __future__ import annotations

from collections import Counter

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime

from kraken.registry.errors import BlobUploadInvalid, BlobUploadUnknown, TooManyRequests, Unsupported
from kraken.registry.messages import registry_logger
from kraken.store.uploads import UploadArea, UploadUnknown

#: Seconds a client refused for too many open sessions is told to wait: sessions end as uploads complete.
SESSIONS_RETRY_AFTER = 5


@attrs.frozen
class UploadLimits:
    """0 is "no limit" for each."""

    max_blob_size: int = 0
    max_sessions: int = 0
    max_sessions_per_client: int = 0


@attrs.define
class UploadSession:
    repo: str
    started: float
    finishing: bool = False
    client: str = ""


class UploadSessions:
    """The sessions of the uploads in progress, keyed by upload id."""

    def __init__(self, uploads: UploadArea | None, *, clock: IReactorTime, read_only_message: str) -> None:
        self._uploads = uploads
        self._clock = clock
        self._read_only_message = read_only_message
        self._sessions: dict[str, UploadSession] = {}
        self._per_client: Counter[str] = Counter()
        self.limits = UploadLimits()
        self.log = registry_logger(self)

    def __contains__(self, uid: object) -> bool:
        return uid in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def area(self) -> UploadArea:
        """The upload area (UNSUPPORTED on a read-only registry)."""
        if self._uploads is None:  # read-only: writes were refused earlier
            raise Unsupported(self._read_only_message)
        return self._uploads

    async def start(self, repo: str, *, finishing: bool = False, client: str = "") -> tuple[str, UploadSession]:
        """A new upload in ``repo`` for ``client`` (its address): its id and session; 429 TOOMANYREQUESTS if
        the limits of open sessions are reached."""
        area = self.area()
        self._check_room(client)
        uid = await area.create()
        try:
            self._check_room(client)  # others may have started meanwhile
        except TooManyRequests:
            await area.delete(uid)
            raise
        session = self._sessions[uid] = UploadSession(repo, self._clock.seconds(), finishing=finishing, client=client)
        self._per_client[client] += 1
        return uid, session

    def _check_room(self, client: str) -> None:
        limits = self.limits
        if limits.max_sessions and len(self._sessions) >= limits.max_sessions:
            what, limit = "upload sessions are open", limits.max_sessions
        elif limits.max_sessions_per_client and self._per_client[client] >= limits.max_sessions_per_client:
            what, limit = f"upload sessions are open for {client}", limits.max_sessions_per_client
        else:
            return
        self.log.warn("refused a new upload from {client}: {limit} {what}", client=client, limit=limit, what=what)
        raise TooManyRequests(
            f"too many upload sessions: {limit} {what}; finish or cancel one, or try again later",
            detail={"limit": limit},
            headers={"Retry-After": str(SESSIONS_RETRY_AFTER)},
        )

    def get(self, repo: str, uid: str) -> UploadSession:
        """The session of upload ``uid`` in ``repo`` (BLOB_UPLOAD_UNKNOWN if
        there is none, or it belongs to another repository)."""
        session = self._sessions.get(uid)
        if session is None or session.repo != repo or self._uploads is None:
            raise BlobUploadUnknown(detail={"uuid": uid})
        return session

    def idle(self, repo: str, uid: str) -> UploadSession:
        """``get``, refusing an upload that a PUT is completing."""
        session = self.get(repo, uid)
        if session.finishing:
            raise BlobUploadInvalid("the upload is being completed", detail={"uuid": uid})
        return session

    def size(self, uid: str) -> int:
        """Bytes upload ``uid`` holds; a lost upload loses its session."""
        try:
            return self.area().size(uid)
        except UploadUnknown:
            self.forget(uid)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None

    def forget(self, uid: str) -> None:
        """Drop the session (its upload is gone or goes separately)."""
        session = self._sessions.pop(uid, None)
        if session is not None:
            self._per_client[session.client] -= 1
            if self._per_client[session.client] <= 0:
                del self._per_client[session.client]

    async def discard(self, uid: str) -> None:
        """Drop the session and delete its upload."""
        self.forget(uid)
        await self.area().delete(uid)

    async def discard_if_open(self, uid: str) -> None:
        """``discard`` unless the session is already gone (the upload was
        completed, or deleted with it)."""
        if uid in self._sessions:
            await self.discard(uid)

    async def drop_refused(self, repo: str, uid: str) -> None:
        """Upload ``uid`` in ``repo`` met a body the site could not store:
        delete it with its session (the client starts again). Never fails."""
        session = self._sessions.get(uid)
        if self._uploads is None or session is None or session.repo != repo:
            return
        self.forget(uid)
        try:
            await self._uploads.delete(uid)
        except Exception:
            self.log.failure("deleting upload {uid} failed", uid=uid)

    async def expire(self, now: float, max_age: float) -> list[str]:
        """Delete uploads untouched for ``max_age`` seconds and forget their
        sessions; the ids gone. Never fails: errors are logged."""
        if self._uploads is None:
            return []
        try:
            stale = await self._uploads.expire(now, max_age)
        except CancelledError:
            raise
        except Exception:
            self.log.failure("expiring uploads failed")
            return []
        gone = []
        for uid in stale:
            try:
                # expire() skips (but still lists) uploads busy appending.
                self._uploads.size(uid)
            except UploadUnknown:
                self.forget(uid)
                gone.append(uid)
        return gone
