"""TLS on the local server: HTTPS and `wss://` for the gateway, the relay, the status page and metrics.

- `[server] tls_cert_file` and `tls_key_file` (PEM) turn it on; the key file must not be readable by its
  group or by others (`check_files` refuses it with a `ConfigError`: exit 78). TLS 1.2 and 1.3 only.
- `[server] tls_client_ca_file` asks every client for a certificate signed by that CA (mutual TLS): a
  connection without one is refused at the handshake, before any HTTP.
- `[[accounts.clients]] tls_client_subject` binds a bot's local key to the subject CN of the certificate it
  connects with (`SubjectCheck`): the key alone, copied to another machine, is refused
  `authenticationError`, and counted.
- `ServerTls.reload()` reads the certificate and key again into the live context: new handshakes use
  them, connections already open keep theirs. The CA is read at start only.

The certificate's subject, names and expiry are read here from its DER bytes (`read_certificate`), so that
`guardian check-config`, the start-up log and `guardian_tls_cert_expiry_seconds` say them with the
standard library alone. No key byte, passphrase or certificate content reaches a message or a log.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from guardian.errors import ConfigError

if TYPE_CHECKING:
    from guardian.config import ClientConfig, ServerConfig

log = structlog.get_logger("guardian.tls")

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
EXPIRY_WARNING_DAYS: Final = 14  # the alert's threshold (deploy/prometheus/alerts.yml), and the log's
_GROUP_OR_OTHER_READ: Final = stat.S_IRGRP | stat.S_IROTH
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)
# Handshakes the server ended, by what OpenSSL said (`guardian_tls_handshake_failures_total{reason}`).
HANDSHAKE_FAILURES: Final = (
    "no_client_certificate",  # mutual TLS, and the client presented none
    "client_certificate_refused",  # mutual TLS, and its certificate is not the client CA's (or expired)
    "server_certificate_refused",  # the client's alert: it does not trust guardian's certificate
    "protocol_version",  # TLS older than 1.2, or not TLS at all
    "plain_http",  # an http:// request to the TLS port
    "other",
)
_FAILURE_BY_REASON: Final = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "client_certificate_refused",
    "HTTP_REQUEST": "plain_http",
    "HTTPS_PROXY_REQUEST": "plain_http",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
}
_CERTIFICATE_ALERTS: Final = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED")


class TlsError(ConfigError):
    """A TLS file is missing, unreadable, too open, or not what its key says; the message names the key."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What an operator needs to know of a certificate: who it names, for which hosts, until when."""

    subject: str  # e.g. "CN=guardian.example, O=Shop"
    issuer: str
    names: tuple[str, ...]  # its subjectAltName entries, "DNS:host" / "IP:10.0.0.5"
    not_after: float  # Unix time

    def seconds_left(self, now: float | None = None) -> float:
        return self.not_after - (time.time() if now is None else now)

    def days_left(self, now: float | None = None) -> int:
        return int(self.seconds_left(now) // 86400)

    def describe(self, now: float | None = None) -> str:
        expires = datetime.fromtimestamp(self.not_after, UTC).strftime("%Y-%m-%d %H:%M UTC")
        days = self.days_left(now)
        left = f"{days} days left" if days >= 0 else f"EXPIRED {-days} days ago"
        names = ", ".join(self.names) or "none"
        return f"subject {self.subject}, names {names}, issuer {self.issuer}, expires {expires} ({left})"


# ---- files ----------------------------------------------------------------------------------------------
def check_key_mode(path: Path, key: str = "server.tls_key_file") -> None:
    """Refuse a private key file that its group or others may read (as ssh refuses an open key)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise TlsError(f"{key}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if mode & _GROUP_OR_OTHER_READ:
        raise TlsError(
            f"{key}: {path} is readable by its group or by others (mode {stat.S_IMODE(mode):04o}): "
            f"a private key must be readable by guardian's user alone; run `chmod 600 {path}`"
        )


def check_files(server: ServerConfig) -> CertInfo | None:
    """Everything `server_context` needs, checked now (for `check-config` and the configuration's parse):
    the pair present together, the key's mode, the certificate readable, the key matching it, the CA
    readable. The certificate's description, or None when TLS is off."""
    cert, key, ca = server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file
    if (cert is None) != (key is None):
        given, missing = (
            ("tls_cert_file", "tls_key_file") if key is None else ("tls_key_file", "tls_cert_file")
        )
        raise TlsError(
            f"server.{given} is set without server.{missing}: TLS needs both, the certificate and its key"
        )
    if cert is None:
        if ca is not None:
            raise TlsError(
                "server.tls_client_ca_file is set without server.tls_cert_file and tls_key_file: "
                "mutual TLS needs the server's own certificate too"
            )
        return None
    server_context(server)  # the pair and the CA, loaded as the server will load them
    return read_certificate(cert)


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    check_key_mode(key)
    asked: list[bool] = []

    def no_passphrase() -> bytes:  # OpenSSL would otherwise ask on the terminal
        asked.append(True)
        return b""

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except FileNotFoundError as exc:
        raise TlsError(f"server.tls_cert_file / tls_key_file: {exc.filename} does not exist") from None
    except OSError as exc:  # ssl.SSLError is one: OpenSSL's reason names no byte of the key
        if asked:
            raise TlsError(
                f"server.tls_key_file: {key} is encrypted with a passphrase, which guardian cannot be given: "
                f"store it unencrypted, readable by guardian's user alone (`openssl pkey -in {key} -out NEW`)"
            ) from None
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise TlsError(
            f"server.tls_cert_file / tls_key_file: cannot load {cert} with {key} ({reason}): both must be PEM, "
            "the key the certificate's own, the certificate first in its file and its chain after it"
        ) from None


def server_context(server: ServerConfig) -> ssl.SSLContext:
    """The server's context: its certificate and key, TLS 1.2+, and with a client CA, a required client
    certificate signed by it."""
    assert server.tls_cert_file is not None and server.tls_key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, server.tls_cert_file, server.tls_key_file)
    if server.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=server.tls_client_ca_file)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            raise TlsError(
                f"server.tls_client_ca_file: cannot load {server.tls_client_ca_file} ({reason}): "
                "give the PEM certificate of the CA that signs the bots' certificates"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def status_client_context(
    *, pinned: Path | None, cafile: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    """What `guardian status` trusts and presents on an `https://` daemon.

    - `cafile` (`--cacert`): that CA, and the usual name check.
    - else `pinned` (the daemon's own `server.tls_cert_file`, with `--config`): exactly that certificate
      (its first in the file, not the chain after it) is the trust anchor. Another one, even from the same
      CA, is refused; its names need not include the address asked, which is this machine's.
    - else the system's CAs.
    `cert` (and `key`, when the key is not in the certificate's file): the client certificate a mutual-TLS
    daemon asks for."""
    if cafile is not None:
        try:
            context = ssl.create_default_context(cafile=str(cafile))
        except (OSError, ValueError) as exc:
            raise TlsError(
                f"--cacert: cannot load {cafile} ({_reason(exc)}): give a PEM CA certificate"
            ) from None
    elif pinned is not None:
        try:
            der = _first_der(pinned.read_bytes())
            context = ssl.create_default_context(cadata=der)
        except (OSError, ValueError, binascii.Error) as exc:
            raise TlsError(f"server.tls_cert_file: cannot trust {pinned} ({_reason(exc)})") from None
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is the anchor
        context.check_hostname = False  # the anchor is the one certificate: no other can pass for it
    else:
        context = ssl.create_default_context()
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), None if key is None else str(key), password=lambda: b"")
        except (OSError, ValueError) as exc:
            where = f"{cert}" if key is None else f"{cert} with {key}"
            hint = "" if key is not None else " (give the key with --key when it is in a file of its own)"
            raise TlsError(f"--cert: cannot load {where} ({_reason(exc)}){hint}") from None
    return context


def _first_der(pem: bytes) -> bytes:
    """The first certificate of a PEM file's bytes, as DER; ValueError when there is none."""
    found = _PEM_CERT.search(pem)
    if found is None:
        raise ValueError("no PEM certificate in it")
    return base64.b64decode(found[1], validate=False)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc or type(exc).__name__)


def handshake_failure(reason: str | None) -> str:
    """The kind (one of HANDSHAKE_FAILURES) of a failed handshake, from OpenSSL's reason code."""
    reason = reason or ""
    if reason in _FAILURE_BY_REASON:
        return _FAILURE_BY_REASON[reason]
    if "ALERT" in reason and any(alert in reason for alert in _CERTIFICATE_ALERTS):
        return "server_certificate_refused"
    return "other"


OnHandshakeFailure = Callable[[str, str], None]  # (kind, OpenSSL's reason)


def watched_sslobject(on_failure: OnHandshakeFailure) -> type[ssl.SSLObject]:
    """An `SSLContext.sslobject_class` (the documented hook for what `wrap_bio`, and so asyncio's TLS,
    makes) that tells `on_failure` of each handshake OpenSSL ends with an error. asyncio closes those
    connections without a word (an `SSLError` is an `OSError`, logged only in debug mode), and under
    TLS 1.3 a bot refused for its certificate sees only a closed connection: this is where an operator
    learns why. A client that closes during the handshake (as Python's does when it distrusts guardian's
    certificate, without an alert) ends no OpenSSL call and is not seen here. The peer's address is not
    known at this level."""

    class HandshakeWatched(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                reason = str(exc.reason or type(exc).__name__)
                try:
                    on_failure(handshake_failure(exc.reason), reason)
                except Exception:  # counting must never change how a handshake ends
                    log.exception("tls_handshake_watch_failed")
                raise

    return HandshakeWatched


class ServerTls:
    """The live server context and what its certificate says. `reload()` re-reads the pair into it."""

    def __init__(self, server: ServerConfig, on_handshake_failure: OnHandshakeFailure | None = None) -> None:
        self.server = server
        self.context = server_context(server)
        if on_handshake_failure is not None:
            self.context.sslobject_class = watched_sslobject(on_handshake_failure)
        assert server.tls_cert_file is not None
        self.info = read_certificate(server.tls_cert_file)
        self.mutual = server.tls_client_ca_file is not None

    @classmethod
    def of(
        cls, server: ServerConfig, on_handshake_failure: OnHandshakeFailure | None = None
    ) -> ServerTls | None:
        return cls(server, on_handshake_failure) if server.tls_cert_file is not None else None

    def __repr__(self) -> str:
        return f"ServerTls({self.info.subject!r}, mutual={self.mutual})"

    def reload(self, server: ServerConfig | None = None) -> CertInfo:
        """Read the certificate and key again (from `server`'s paths, if given) into the live context.

        New handshakes get the new pair at once; open connections keep the one they began with. A file that
        is missing, too open or does not match raises `TlsError` and leaves the context as it was (a
        failed `load_cert_chain` changes nothing in OpenSSL's context). The client CA cannot be swapped in
        a live context (OpenSSL only adds to its store): a changed `tls_client_ca_file`, or TLS turned on or
        off, raises `TlsError` asking for a restart."""
        server = server or self.server
        if server.tls_cert_file is None or server.tls_key_file is None:
            raise TlsError(
                "server.tls_cert_file / tls_key_file were removed: TLS is turned off by a restart only"
            )
        if server.tls_client_ca_file != self.server.tls_client_ca_file:
            raise TlsError(
                "server.tls_client_ca_file changed: the client CA is read at start; restart guardian"
            )
        info = read_certificate(server.tls_cert_file)
        _load_chain(self.context, server.tls_cert_file, server.tls_key_file)
        self.server, self.info = server, info
        return info

    def state_json(self) -> dict[str, Any]:
        return {
            "subject": self.info.subject,
            "names": list(self.info.names),
            "not_after": datetime.fromtimestamp(self.info.not_after, UTC).isoformat().replace("+00:00", "Z"),
            "days_left": self.info.days_left(),
        }


def state_json(server: ServerConfig, live: ServerTls | None) -> dict[str, Any]:
    """`/guardian/state`'s `server`: whether bots on other machines talk to guardian in clear."""
    return {
        "listen": server.listen,
        "tls": live is not None,
        "mutual_tls": live is not None and live.mutual,
        "plaintext_beyond_loopback": live is None and not server.is_loopback,
        "certificate": None if live is None else live.state_json(),
    }


# ---- the bot's certificate ------------------------------------------------------------------------------
def peer_common_names(transport: Any) -> tuple[str, ...] | None:
    """The subject CNs of the verified client certificate on `transport`; None without one."""
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    return tuple(value for rdn in peer.get("subject", ()) for name, value in rdn if name == "commonName")


class SubjectCheck:
    """`tls_client_subject`: a bot's key is good only on a connection whose certificate names that CN."""

    def __init__(self, on_mismatch: Callable[[str, str], None] | None = None) -> None:
        self.on_mismatch = on_mismatch  # (account, bot): the metric

    def problem(self, transport: Any, account: str, client: ClientConfig) -> str | None:
        """None if the key may be used here; else why not (logged and counted here, never told the bot)."""
        wanted = client.tls_client_subject  # read now: a reload swaps the client's configuration
        if wanted is None:
            return None
        found = peer_common_names(transport)
        if found == (wanted,):
            return None
        why = "no client certificate" if found is None else "a certificate for another subject"
        log.warning(
            "tls_subject_mismatch", account=account, bot=client.name, reason=why, presented=list(found or ())
        )
        if self.on_mismatch is not None:
            self.on_mismatch(account, client.name)
        return why


# ---- reading a certificate ------------------------------------------------------------------------------
_OID_NAMES: Final = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "1.2.840.113549.1.9.1": "emailAddress",
}
_SUBJECT_ALT_NAME: Final = "2.5.29.17"
_SEQUENCE, _SET, _OID, _OCTETS, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x31, 0x06, 0x04, 0x17, 0x18
_VERSION, _EXTENSIONS, _DNS_NAME, _IP_ADDRESS = 0xA0, 0xA3, 0x82, 0x87


def read_certificate(path: Path) -> CertInfo:
    """The first certificate of a PEM file (the server's own, its chain after it)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TlsError(
            f"server.tls_cert_file: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        return parse_certificate(_first_der(pem))
    except (ValueError, IndexError, binascii.Error):
        raise TlsError(f"server.tls_cert_file: {path} holds no readable PEM certificate") from None


def parse_certificate(der: bytes) -> CertInfo:
    """Subject, issuer, subjectAltName and notAfter of a DER X.509 certificate (RFC 5280 4.1)."""
    tag, start, end = _element(der, 0)
    certificate = _children(der, start, end, tag, _SEQUENCE)
    tbs = _children(der, certificate[0][1], certificate[0][2], certificate[0][0], _SEQUENCE)
    if tbs[0][0] == _VERSION:
        tbs = tbs[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional fields.
    issuer, validity, subject = tbs[2], tbs[3], tbs[4]
    not_after = _children(der, validity[1], validity[2], validity[0], _SEQUENCE)[1]
    names: tuple[str, ...] = ()
    for field in tbs[6:]:
        if field[0] == _EXTENSIONS:
            names = _alt_names(der, field)
    return CertInfo(_name(der, subject), _name(der, issuer), names, _time(der, not_after))


_Element = tuple[int, int, int]  # tag, start of its content, end of its content


def _element(der: bytes, at: int) -> _Element:
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _children(der: bytes, start: int, end: int, tag: int, expected: int) -> list[_Element]:
    if tag != expected:
        raise ValueError(f"DER tag {tag:#x}, expected {expected:#x}")
    found = []
    while start < end:
        element = _element(der, start)
        found.append(element)
        start = element[2]
    return found


def _oid(raw: bytes) -> str:
    arcs = [min(raw[0] // 40, 2), raw[0] - 40 * min(raw[0] // 40, 2)]
    value = 0
    for byte in raw[1:]:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


def _text(tag: int, raw: bytes) -> str:
    return raw.decode("utf-16-be" if tag == 0x1E else "utf-8", errors="replace")


def _name(der: bytes, name: _Element) -> str:
    parts = []
    for rdn in _children(der, name[1], name[2], name[0], _SEQUENCE):
        for attribute in _children(der, rdn[1], rdn[2], rdn[0], _SET):
            oid, value = _children(der, attribute[1], attribute[2], attribute[0], _SEQUENCE)[:2]
            dotted = _oid(der[oid[1] : oid[2]])
            parts.append(f"{_OID_NAMES.get(dotted, dotted)}={_text(value[0], der[value[1] : value[2]])}")
    return ", ".join(parts)


def _time(der: bytes, element: _Element) -> float:
    text = der[element[1] : element[2]].decode("ascii")
    if element[0] == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: 50-99 are 19xx
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif element[0] != _GENERALIZED_TIME:
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC).timestamp()


def _alt_names(der: bytes, extensions: _Element) -> tuple[str, ...]:
    [inner] = _children(der, extensions[1], extensions[2], extensions[0], _EXTENSIONS)
    for extension in _children(der, inner[1], inner[2], inner[0], _SEQUENCE):
        parts = _children(der, extension[1], extension[2], extension[0], _SEQUENCE)
        if _oid(der[parts[0][1] : parts[0][2]]) != _SUBJECT_ALT_NAME:
            continue
        value = parts[-1]
        if value[0] != _OCTETS:
            raise ValueError("subjectAltName is not an OCTET STRING")
        general = _element(der, value[1])
        names = []
        for tag, start, end in _children(der, general[1], general[2], general[0], _SEQUENCE):
            if tag == _DNS_NAME:
                names.append(f"DNS:{der[start:end].decode('ascii', errors='replace')}")
            elif tag == _IP_ADDRESS:
                names.append(f"IP:{ipaddress.ip_address(der[start:end])}")
        return tuple(names)
    return ()


def describe(server: ServerConfig, now: float | None = None) -> list[str]:
    """`guardian check-config`'s TLS lines."""
    info = check_files(server)
    if info is None:
        where = "loopback only" if server.is_loopback else "BEYOND LOOPBACK: bots' traffic travels in clear"
        return [f"tls: off (plain HTTP and ws://; {where})"]
    mutual = (
        f"mutual TLS, client certificates signed by {server.tls_client_ca_file}"
        if server.tls_client_ca_file is not None
        else "no client certificate asked (server.tls_client_ca_file is not set)"
    )
    lines = [f"tls: on, TLS 1.2+, {mutual}", f"tls certificate: {server.tls_cert_file}: {info.describe(now)}"]
    if info.days_left(now) < EXPIRY_WARNING_DAYS:
        lines.append(f"warning: server.tls_cert_file expires in {info.days_left(now)} days: renew it")
    return lines
