"""A scripted milter *server* for the end-to-end tests: the peer tern's milter client talks to.

Written from the protocol write-ups, not from tern's code: Sendmail's libmilter/docs and include/libmilter/mfdef.h
(the command, response, action and protocol constants), the "Sendmail Milter protocol" notes of the
pymilter / milter-manager projects (https://pythonhosted.org/pymilter/milter_api/,
https://github.com/avar/sendmail-pmilter/blob/master/doc/milter-protocol.txt) and Postfix's MILTER_README.

Wire format: every packet is a 4-octet big-endian length (counting the command octet), one command octet, then the
payload. Strings are NUL-terminated. The MTA opens with SMFIC_OPTNEG (version, actions, protocol flags); the milter
answers with its own three words. Then, per SMTP step, the MTA sends SMFIC_MACRO (no reply) and the step's command;
the milter answers every step with one response (continue, accept, reject, ...) unless an NR_* flag was agreed. At
the end of the message (SMFIC_BODYEOB) the milter may first send modifications (add/insert/change header, change
sender, add/delete recipient, replace body, quarantine) and SMFIR_PROGRESS packets, then its verdict.

    peer = MilterPeer(Script(responses={"rcpt": "reject"}, modifications=[("addheader", "X-A", "1")]))
    with peer:                       # listens on 127.0.0.1:peer.port (and a unix socket if asked)
        ...                          # tern config: address = peer.address
        conn = peer.wait_connection()
        conn.transactions[0].headers # [(name, value), ...] exactly as tern sent them

A test may replace `peer.script` between SMTP sessions; each step reads the script current at that moment.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------- constants (mfdef.h)

# Commands, MTA -> milter.
SMFIC_ABORT, SMFIC_BODY, SMFIC_CONNECT, SMFIC_MACRO = b"A", b"B", b"C", b"D"
SMFIC_BODYEOB, SMFIC_HELO, SMFIC_QUIT_NC, SMFIC_HEADER = b"E", b"H", b"K", b"L"
SMFIC_MAIL, SMFIC_EOH, SMFIC_OPTNEG, SMFIC_QUIT = b"M", b"N", b"O", b"Q"
SMFIC_RCPT, SMFIC_DATA, SMFIC_UNKNOWN = b"R", b"T", b"U"

# Responses, milter -> MTA.
SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ADDRCPT_PAR = b"+", b"-", b"2"
SMFIR_SHUTDOWN, SMFIR_ACCEPT, SMFIR_REPLBODY = b"4", b"a", b"b"
SMFIR_CONTINUE, SMFIR_DISCARD, SMFIR_CHGFROM = b"c", b"d", b"e"
SMFIR_CONN_FAIL, SMFIR_ADDHEADER, SMFIR_INSHEADER = b"f", b"h", b"i"
SMFIR_SETSYMLIST, SMFIR_CHGHEADER, SMFIR_PROGRESS = b"l", b"m", b"p"
SMFIR_QUARANTINE, SMFIR_REJECT, SMFIR_SKIP = b"q", b"r", b"s"
SMFIR_TEMPFAIL, SMFIR_REPLYCODE = b"t", b"y"

# Actions (what the milter may do at end of message).
SMFIF_ADDHDRS, SMFIF_CHGBODY, SMFIF_ADDRCPT, SMFIF_DELRCPT = 0x01, 0x02, 0x04, 0x08
SMFIF_CHGHDRS, SMFIF_QUARANTINE, SMFIF_CHGFROM = 0x10, 0x20, 0x40
SMFIF_ADDRCPT_PAR, SMFIF_SETSYMLIST = 0x80, 0x100
ALL_ACTIONS = 0x1FF

# Protocol flags: NO_* = do not send that step, NR_* = the milter will not reply to it.
SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT = 0x1, 0x2, 0x4, 0x8
SMFIP_NOBODY, SMFIP_NOHDRS, SMFIP_NOEOH, SMFIP_NR_HDR = 0x10, 0x20, 0x40, 0x80
SMFIP_NOUNKNOWN, SMFIP_NODATA, SMFIP_SKIP, SMFIP_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
SMFIP_NR_DATA, SMFIP_NR_UNKN, SMFIP_NR_EOH, SMFIP_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
SMFIP_HDR_LEADSPC = 0x100000

# Macro stages of SMFIR_SETSYMLIST / the OPTNEG macro lists.
SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_DATA, SMFIM_EOM, SMFIM_EOH = range(7)

MAX_BODY_CHUNK = 65535  # MILTER_CHUNK_SIZE: the largest SMFIC_BODY / SMFIR_REPLBODY payload
MAX_PACKET = 65535 + 1 + 1024  # a little slack for a header command; anything larger is an error here

# Step names used by Script, with their command octet and the NR_* flag that drops the reply.
STEPS = {
    SMFIC_CONNECT: ("connect", SMFIP_NR_CONN), SMFIC_HELO: ("helo", SMFIP_NR_HELO),
    SMFIC_MAIL: ("mail", SMFIP_NR_MAIL), SMFIC_RCPT: ("rcpt", SMFIP_NR_RCPT), SMFIC_DATA: ("data", SMFIP_NR_DATA),
    SMFIC_HEADER: ("header", SMFIP_NR_HDR), SMFIC_EOH: ("eoh", SMFIP_NR_EOH), SMFIC_BODY: ("body", SMFIP_NR_BODY),
    SMFIC_BODYEOB: ("eom", 0), SMFIC_UNKNOWN: ("unknown", SMFIP_NR_UNKN),
}
STAGE_OF_MACRO = {c: name for c, (name, _) in STEPS.items()}
NO_REPLY_FLAG = {name: flag for name, flag in STEPS.values()}

# Ready-made garbage: an unknown response octet, a length far over any limit, plain text, a truncated packet.
GARBAGE_UNKNOWN_CODE = b"\x00\x00\x00\x01Z"
GARBAGE_HUGE_LENGTH = b"\x7f\xff\xff\xff" + b"c"
GARBAGE_TEXT = b"220 this is an SMTP server, not a milter\r\n"
GARBAGE_TRUNCATED = b"\x00\x00\x00\x10y554 5.7"  # claims 16 octets, sends 9, then the socket is closed


def packet(cmd: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + cmd + payload


def cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def split_strings(payload: bytes) -> list[bytes]:
    """NUL-terminated strings to the end of the payload (a missing final NUL is recorded as a protocol error)."""
    if not payload:
        return []
    if not payload.endswith(b"\0"):
        raise ValueError(f"strings not NUL-terminated: {payload[:80]!r}")
    return payload[:-1].split(b"\0")


def response_packet(spec: str) -> bytes:
    """One response from its script name; a string starting with a digit is SMFIR_REPLYCODE ("554 5.7.0 Go away")."""
    simple = {"continue": SMFIR_CONTINUE, "accept": SMFIR_ACCEPT, "reject": SMFIR_REJECT,
              "tempfail": SMFIR_TEMPFAIL, "discard": SMFIR_DISCARD, "skip": SMFIR_SKIP,
              "shutdown": SMFIR_SHUTDOWN, "conn_fail": SMFIR_CONN_FAIL}
    if spec[:1].isdigit():
        return packet(SMFIR_REPLYCODE, cstr(spec))
    return packet(simple[spec])


def modification_packets(mod: tuple) -> list[bytes]:
    """The packet(s) of one modification tuple (see Script.modifications)."""
    kind, *args = mod
    if kind == "addheader":
        return [packet(SMFIR_ADDHEADER, cstr(args[0]) + cstr(args[1]))]
    if kind == "insheader":
        return [packet(SMFIR_INSHEADER, struct.pack(">I", args[0]) + cstr(args[1]) + cstr(args[2]))]
    if kind == "chgheader":
        return [packet(SMFIR_CHGHEADER, struct.pack(">I", args[0]) + cstr(args[1]) + cstr(args[2]))]
    if kind == "chgfrom":
        return [packet(SMFIR_CHGFROM, cstr(args[0]) + (cstr(args[1]) if len(args) > 1 and args[1] else b""))]
    if kind == "addrcpt":
        return [packet(SMFIR_ADDRCPT, cstr(args[0]))]
    if kind == "addrcpt_par":
        return [packet(SMFIR_ADDRCPT_PAR, cstr(args[0]) + cstr(args[1]))]
    if kind == "delrcpt":
        return [packet(SMFIR_DELRCPT, cstr(args[0]))]
    if kind == "replbody":
        body = args[0]
        return [packet(SMFIR_REPLBODY, body[i:i + MAX_BODY_CHUNK]) for i in range(0, len(body), MAX_BODY_CHUNK)] \
            or [packet(SMFIR_REPLBODY, b"")]
    if kind == "quarantine":
        return [packet(SMFIR_QUARANTINE, cstr(args[0]))]
    if kind == "progress":
        return [packet(SMFIR_PROGRESS)]
    if kind == "raw":  # ("raw", b"X", payload): any packet at all
        return [packet(args[0], args[1] if len(args) > 1 else b"")]
    raise ValueError(f"unknown modification {mod!r}")


# ---------------------------------------------------------------- the script


@dataclass
class Script:
    """What the milter answers. Steps: connect helo mail rcpt data header eoh body eom unknown.

    responses:      step -> "continue" (default) | "accept" | "reject" | "tempfail" | "discard" | "skip" |
                    "CODE X.Y.Z text" (SMFIR_REPLYCODE). "header"/"body" apply to every header / body chunk.
    rcpt_responses: recipient address (without <>, any case) -> response, before responses["rcpt"].
    modifications:  tuples sent at EOM before the verdict, in order: ("addheader", name, value),
                    ("insheader", index, name, value), ("chgheader", index, name, value), ("chgfrom", addr[, args]),
                    ("addrcpt", addr), ("addrcpt_par", addr, args), ("delrcpt", addr), ("replbody", bytes),
                    ("quarantine", reason), ("progress",), ("raw", command_octet, payload).
    progress:       how many SMFIR_PROGRESS packets precede the EOM answer (one per progress_interval seconds).
    delay:          step -> seconds to wait before answering (to run into tern's per-step timeout).
    garbage:        step -> bytes sent instead of the answer (see GARBAGE_*); garbage_then_close: and then close.
    close_at:       steps at which the milter closes the socket instead of answering.
    actions / protocol: the words the milter answers OPTNEG with. actions None = echo what the MTA offered.
    version:        the version it answers (6).
    symlists:       stage (SMFIM_*) -> "macro names separated by spaces", appended to the OPTNEG answer.
    """

    responses: dict[str, str] = field(default_factory=dict)
    rcpt_responses: dict[str, str] = field(default_factory=dict)
    modifications: list[tuple] = field(default_factory=list)
    progress: int = 0
    progress_interval: float = 0.2
    delay: dict[str, float] = field(default_factory=dict)
    garbage: dict[str, bytes] = field(default_factory=dict)
    close_at: set[str] = field(default_factory=set)
    garbage_then_close: bool = False
    actions: int | None = None
    protocol: int = 0
    version: int = 6
    symlists: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------- what the milter received


@dataclass
class Transaction:
    """One SMTP transaction as the milter saw it (from MAIL, or the first later step if MAIL was not sent)."""

    mail: list[str] | None = None  # [sender, esmtp args...] as sent ("<a@b>", "SIZE=12")
    rcpts: list[list[str]] = field(default_factory=list)
    data: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    eoh: bool = False
    body_chunks: list[bytes] = field(default_factory=list)
    eom: bool = False
    eom_payload: bytes = b""  # SMFIC_BODYEOB may carry a last body chunk
    aborted: bool = False
    macros: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> {name: value}

    @property
    def body(self) -> bytes:
        return b"".join(self.body_chunks) + self.eom_payload

    @property
    def rcpt_addrs(self) -> list[str]:
        return [r[0] for r in self.rcpts]


@dataclass
class Connection:
    """Everything one milter connection received, in order."""

    number: int
    offered: tuple[int, int, int] | None = None  # (version, actions, protocol) of the MTA's OPTNEG
    agreed_actions: int = 0  # what the milter answered, masked by the offer
    agreed_protocol: int = 0
    connect: tuple[str, str, int, str] | None = None  # (hostname, family "4"/"6"/"L"/"U", port, address)
    helo: list[str] = field(default_factory=list)
    macros: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> last {name: value}
    macro_log: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # command octets in arrival order, e.g. "O", "D", "C"
    unknown: list[bytes] = field(default_factory=list)
    quit: bool = False
    quit_nc: bool = False
    closed: bool = False  # the connection has ended (either side)
    errors: list[str] = field(default_factory=list)  # protocol errors in what the MTA sent
    current: Transaction | None = None

    def txn(self) -> Transaction:
        if self.current is None:
            self.current = Transaction()
            self.transactions.append(self.current)
        return self.current

    @property
    def aborts(self) -> int:
        return self.commands.count("A")


class _Closed(Exception):
    pass


class MilterPeer:
    """The server: 127.0.0.1:<free port> (or `port`), and also `unix_path` if given; one thread per connection."""

    def __init__(self, script: Script | None = None, port: int = 0, unix_path: str | Path | None = None,
                 name: str = "milterpeer"):
        self.script = script or Script()
        self.name = name
        self.connections: list[Connection] = []
        self.cond = threading.Condition()
        self._listeners: list[socket.socket] = []
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))
        tcp.listen(64)
        self.port = tcp.getsockname()[1]
        self._listeners.append(tcp)
        self.unix_path = str(unix_path) if unix_path else None
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            us.bind(self.unix_path)
            us.listen(64)
            self._listeners.append(us)

    # -- addresses for the MTA's config

    @property
    def address(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        assert self.unix_path, "no unix socket"
        return f"unix:{self.unix_path}"

    # -- lifecycle

    def start(self) -> "MilterPeer":
        for ls in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(ls,), name=f"{self.name}-accept", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Closes the listeners and every connection; joins the threads (bounded)."""
        self._stopping = True
        for s in self._listeners + list(self._socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self) -> "MilterPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- waiting on what was received (tests never sleep blindly)

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "milter event"):
        """Waits until predicate() is truthy (checked each time the milter records something); returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = predicate()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}; "
                                         f"connections: {self.connections}")
                self.cond.wait(min(left, 0.5))

    def wait_connection(self, n: int = 1, timeout: float = 10.0) -> Connection:
        """The n-th connection (1-based) once it has at least negotiated."""
        return self.wait_for(lambda: len(self.connections) >= n and self.connections[n - 1], timeout,
                             f"connection {n}")

    def wait_closed(self, n: int = 1, timeout: float = 10.0) -> Connection:
        """The n-th connection once it has ended (QUIT, close by tern or by the script)."""
        self.wait_connection(n, timeout)
        return self.wait_for(lambda: self.connections[n - 1].closed and self.connections[n - 1], timeout,
                             f"connection {n} to close")

    def errors(self) -> list[str]:
        return [e for c in self.connections for e in c.errors]

    # -- the server

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stopping:
            try:
                s, _ = ls.accept()
            except OSError:
                return
            self._socks.append(s)
            t = threading.Thread(target=self._serve, args=(s,), name=f"{self.name}-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _record(self, fn) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def _serve(self, s: socket.socket) -> None:
        with self.cond:
            conn = Connection(number=len(self.connections) + 1)
            self.connections.append(conn)
            self.cond.notify_all()
        s.settimeout(None)
        try:
            while True:
                cmd, payload = self._read(s)
                try:
                    if not self._handle(s, conn, cmd, payload):
                        break
                except (ValueError, struct.error, IndexError) as e:
                    error = f"{cmd!r}: {e}"
                    self._record(lambda: conn.errors.append(error))
                    break
        except _Closed:
            pass
        except OSError:
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass
            self._record(lambda: setattr(conn, "closed", True))

    @staticmethod
    def _read_exact(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return buf

    def _read(self, s: socket.socket) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._read_exact(s, 4))
        if length == 0 or length > MAX_PACKET:
            raise ValueError(f"packet length {length} out of range")
        data = self._read_exact(s, length)
        return data[:1], data[1:]

    def _answer(self, s: socket.socket, conn: Connection, step: str, spec: str | None) -> bool:
        """Answers a step according to the script (delay, garbage, close, response). False = connection over."""
        sc = self.script
        if sc.delay.get(step):
            time.sleep(sc.delay[step])  # the milter being slow is the behaviour under test
        if step in sc.close_at:
            return False
        if step in sc.garbage:
            s.sendall(sc.garbage[step])
            return not sc.garbage_then_close
        if conn.agreed_protocol & NO_REPLY_FLAG[step]:
            return True  # NR_*: the MTA expects no reply
        s.sendall(response_packet(spec or sc.responses.get(step, "continue")))
        return True

    def _handle(self, s: socket.socket, conn: Connection, cmd: bytes, payload: bytes) -> bool:
        sc = self.script
        self._record(lambda: conn.commands.append(cmd.decode("latin-1")))
        if cmd == SMFIC_OPTNEG:
            version, actions, protocol = struct.unpack(">III", payload[:12])
            mine_actions = actions if sc.actions is None else sc.actions
            mine_protocol = sc.protocol
            reply = struct.pack(">III", sc.version, mine_actions, mine_protocol)
            for stage, names in sorted(sc.symlists.items()):
                reply += struct.pack(">I", stage) + cstr(names)

            def rec():
                conn.offered = (version, actions, protocol)
                conn.agreed_actions = mine_actions & actions
                conn.agreed_protocol = mine_protocol & protocol
            self._record(rec)
            if "optneg" in sc.close_at:
                return False
            s.sendall(sc.garbage.get("optneg") or packet(SMFIC_OPTNEG, reply))
            return True
        if cmd == SMFIC_MACRO:
            stage = STAGE_OF_MACRO.get(payload[:1], payload[:1].decode("latin-1"))
            items = split_strings(payload[1:])
            if len(items) % 2:
                raise ValueError(f"odd number of macro strings {items!r}")
            d = {items[i].decode("utf-8", "replace"): items[i + 1].decode("utf-8", "replace")
                 for i in range(0, len(items), 2)}

            def rec():
                conn.macros[stage] = d
                conn.macro_log.append((stage, d))
                if stage not in ("connect", "helo"):
                    # MAIL macros arrive before MAIL: they open the transaction.
                    if stage == "mail" and conn.current is not None and conn.current.mail is not None:
                        conn.current = None
                    conn.txn().macros[stage] = d
            self._record(rec)
            return True
        if cmd == SMFIC_CONNECT:
            host, rest = payload.split(b"\0", 1)
            family = rest[:1].decode()
            port, addr = 0, ""
            if family in ("4", "6"):
                (port,) = struct.unpack(">H", rest[1:3])
                addr = split_strings(rest[3:])[0].decode()
            elif family == "L":
                addr = split_strings(rest[3:])[0].decode() if len(rest) > 3 else ""
            self._record(lambda: setattr(conn, "connect", (host.decode("utf-8", "replace"), family, port, addr)))
            return self._answer(s, conn, "connect", None)
        if cmd == SMFIC_HELO:
            name = split_strings(payload)[0].decode("utf-8", "replace")
            self._record(lambda: conn.helo.append(name))
            return self._answer(s, conn, "helo", None)
        if cmd == SMFIC_MAIL:
            args = [a.decode("utf-8", "replace") for a in split_strings(payload)]

            def rec():
                if conn.current is not None and conn.current.mail is not None:
                    conn.current = None
                conn.txn().mail = args
            self._record(rec)
            return self._answer(s, conn, "mail", None)
        if cmd == SMFIC_RCPT:
            args = [a.decode("utf-8", "replace") for a in split_strings(payload)]
            self._record(lambda: conn.txn().rcpts.append(args))
            spec = sc.rcpt_responses.get(args[0].strip("<>").lower()) if args else None
            return self._answer(s, conn, "rcpt", spec)
        if cmd == SMFIC_DATA:
            self._record(lambda: setattr(conn.txn(), "data", True))
            return self._answer(s, conn, "data", None)
        if cmd == SMFIC_HEADER:
            name, value = split_strings(payload)
            pair = (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
            self._record(lambda: conn.txn().headers.append(pair))
            return self._answer(s, conn, "header", None)
        if cmd == SMFIC_EOH:
            self._record(lambda: setattr(conn.txn(), "eoh", True))
            return self._answer(s, conn, "eoh", None)
        if cmd == SMFIC_BODY:
            if len(payload) > MAX_BODY_CHUNK:
                self._record(lambda: conn.errors.append(f"body chunk of {len(payload)} octets"))
            self._record(lambda: conn.txn().body_chunks.append(payload))
            return self._answer(s, conn, "body", None)
        if cmd == SMFIC_BODYEOB:
            def rec():
                t = conn.txn()
                t.eom, t.eom_payload = True, payload
                conn.current = None
            self._record(rec)
            return self._end_of_message(s, conn)
        if cmd == SMFIC_ABORT:
            def rec():
                if conn.current is not None:
                    conn.current.aborted = True
                conn.current = None
            self._record(rec)
            return True  # no reply to ABORT
        if cmd == SMFIC_UNKNOWN:
            self._record(lambda: conn.unknown.append(payload))
            return self._answer(s, conn, "unknown", None)
        if cmd == SMFIC_QUIT:
            self._record(lambda: setattr(conn, "quit", True))
            return False
        if cmd == SMFIC_QUIT_NC:
            # Sendmail 8.14 connection reuse: the next SMTP session follows on this socket, starting at CONNECT.
            def rec():
                conn.quit_nc = True
                conn.current = None
            self._record(rec)
            return True
        raise ValueError(f"unknown command octet {cmd!r}")

    def _end_of_message(self, s: socket.socket, conn: Connection) -> bool:
        sc = self.script
        if sc.delay.get("eom"):
            time.sleep(sc.delay["eom"])
        if "eom" in sc.close_at:
            return False
        if "eom" in sc.garbage:
            s.sendall(sc.garbage["eom"])
            return not sc.garbage_then_close
        for _ in range(sc.progress):
            s.sendall(packet(SMFIR_PROGRESS))
            time.sleep(sc.progress_interval)  # a slow milter keeping the MTA waiting: the behaviour under test
        for mod in sc.modifications:
            for p in modification_packets(mod):
                s.sendall(p)
        s.sendall(response_packet(sc.responses.get("eom", "continue")))
        return True
