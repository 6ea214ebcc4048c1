"""TLS over the raw nonblocking socket, with ``ssl.SSLObject`` and memory BIOs.

Same interface as :class:`~transports._sockio.SocketIO`, so the WebSocket code does not
know whether it runs over ws:// or wss://, and the data path keeps its big reads and
batched writes (``trio.SSLStream`` would put its stream API, and a checkpoint per call,
back in the way). No stunnel, no nginx.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from pathlib import Path

from wsnic_trio.errors import PeerClosed, SetupError
from wsnic_trio.transports._sockio import RECV_SIZE, SocketIO

__all__ = ["TlsContext", "TlsSocketIO"]

log = logging.getLogger("wsnic_trio.tls")


class TlsContext:
    """The server's certificate and key; re-loadable (SIGHUP) without touching clients.

    A connection keeps the context it was accepted with; :meth:`reload` only changes
    what new connections get. A reload that fails keeps the old context.
    """

    def __init__(self, certificate: Path, private_key: Path | None) -> None:
        self.certificate = certificate
        self.private_key = private_key
        self.context = self._load()

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # A TLS 1.2 client may ask for a new handshake at any time; each costs the server
        # a full key exchange (a cheap CPU drain) and nothing here needs one. OpenSSL 3
        # refuses client renegotiation by default, 1.1.1 and a local openssl.cnf
        # (Options = ClientRenegotiation) may not: say so ourselves.
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        ctx.set_alpn_protocols(["http/1.1"])
        self._check_files()
        try:
            ctx.load_cert_chain(self.certificate, self.private_key, password=self._encrypted)
        except ssl.SSLError as exc:
            key = self.private_key or self.certificate
            what = (
                f"the private key in {key} does not match the certificate {self.certificate}"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else f"cannot load certificate {self.certificate}"
                + (f" with key {self.private_key}" if self.private_key else "")
                + f": {_ssl_problem(exc)}"
            )
            raise SetupError(f"TLS: {what}") from None
        except OSError as exc:  # (not SSLError, caught above) replaced since the check
            raise SetupError(f"TLS: cannot read {self.certificate}: {exc.strerror}") from None
        return ctx

    def _check_files(self) -> None:
        """Name the file and what is wrong with it: OpenSSL reports a missing key as an
        error without a file name, and a certificate without its key as "PEM lib"."""
        cert = _read_pem(self.certificate, "certificate")
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise SetupError(f"TLS: {self.certificate} holds no PEM certificate")
        if self.private_key is None:
            if b"PRIVATE KEY-----" not in cert:
                raise SetupError(
                    f"TLS: {self.certificate} holds no private key; give the key with "
                    "-k/--wss-private-key"
                )
        elif b"PRIVATE KEY-----" not in _read_pem(self.private_key, "private key"):
            raise SetupError(f"TLS: {self.private_key} holds no PEM private key")

    def _encrypted(self) -> bytes:
        """Called by OpenSSL for a passphrase-protected key: refuse instead of having
        OpenSSL ask on the terminal (a service has none; start-up would hang)."""
        raise SetupError(
            f"TLS: the private key in {self.private_key or self.certificate} is encrypted; "
            "give an unencrypted key (e.g. openssl pkey -in KEY -out PLAIN)"
        )

    def reload(self) -> None:
        self.context = self._load()
        log.info("TLS certificate reloaded from %s", self.certificate)


def _ssl_problem(exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    # OpenSSL's name for "this PEM block does not decode" (bad base64, a cut-off file).
    return "the PEM data is damaged (OpenSSL: PEM lib)" if "PEM lib" in reason else reason


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SetupError(f"TLS: cannot read {what} {path}: {exc.strerror}") from None


class TlsSocketIO(SocketIO):
    """A TLS session on a raw nonblocking socket (server or client side)."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        send_stall_timeout: float,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        super().__init__(sock, send_stall_timeout=send_stall_timeout)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )

    async def handshake(self) -> None:
        """Complete the TLS handshake; SSLError (bad client hello, ...) propagates."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await super().recv_some(RECV_SIZE)
                if not data:
                    raise PeerClosed("connection closed during the TLS handshake") from None
                self._incoming.write(data)
        await self._flush()

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await self._lock()
            try:
                await self._send_raw(self._outgoing.read())
            finally:
                self._send_lock.release()

    async def recv_some(self, size: int = RECV_SIZE) -> bytes:
        while True:
            try:
                data = self._tls.read(size)
            except ssl.SSLWantReadError:
                # What TLS itself has to say first (a refused renegotiation's alert, a
                # key update) must go out before we wait, or the peer waits for it too.
                await self._flush()
                raw = await super().recv_some(size)
                if not raw:
                    return b""  # EOF without close_notify: treated like any EOF
                self._incoming.write(raw)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            if self._outgoing.pending:  # post-handshake messages (TLS 1.3 tickets, ...)
                await self._flush()
            return data

    async def goodbye(self) -> None:
        """Send close_notify, so clients see an orderly end instead of a truncation."""
        if not self.torn:
            # unwrap() then waits for the peer's close_notify; ours is already in the BIO.
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                self._tls.unwrap()
            await self._flush()
        await super().goodbye()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        await self._lock()
        try:
            self._tls.write(data)
            await self._send_raw(self._outgoing.read())
        finally:
            self._send_lock.release()
