//! The inbound SMTP session as a pure state machine: one handler per verb, each returning an
//! [`Action`] for the driver. No I/O happens here, so every command and error can be tested
//! without a socket, and the driver stays a thin loop around it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use tern_config::{Config, MilterListener};
use tern_proto::sasl::{self, Credentials};
use tern_proto::{
    rfc5322_date, AddressError, BodyType, Command, CommandError, DataRejection, ForwardPath,
    HeaderSection, MailParams, RcptParams, Reply, Ret, ReversePath,
};

use tern_auth::{SpfOutcome, SpfVerdict};
pub use tern_delivery::intake::{Accepted, AcceptedRecipient};
use tern_delivery::mailbox_cap::{MailboxCap, NewMailboxes};
use tern_delivery::{Inbound, NotStored};

use crate::client::ClientKey;
use crate::disk::LowSpace;
use crate::policy::{self, RcptDecision};
use crate::received::{self, TraceInfo};
use crate::replies;
use crate::store::StoreError;
use crate::tracker::{AuthAttempt, AuthRefused, ClientTracker};

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: mail from anywhere to local domains.
    Smtp,
    /// Port 587 (RFC 6409): STARTTLS then AUTH.
    Submission,
    /// Port 465 (RFC 8314): implicit TLS then AUTH.
    Submissions,
}

impl ListenerKind {
    /// The config section's name, used in logs and as the `listener` metric label.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub kind: ListenerKind,
    /// Negotiated TLS, e.g. "TLSv1.3 TLS13_AES_256_GCM_SHA384".
    pub tls: Option<String>,
    /// Whether STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
}

#[derive(Debug, Clone)]
struct Helo {
    name: String,
    esmtp: bool,
}

/// An open mail transaction (after MAIL, before the end of DATA).
#[derive(Debug, Clone)]
pub struct Transaction {
    pub id: String,
    pub from: ReversePath,
    pub params: MailParams,
    pub recipients: Vec<AcceptedRecipient>,
    rejected: usize,
    /// The mailboxes its recipients would create (`limits.max_new_mailboxes_per_message`).
    new_mailboxes: NewMailboxes,
    /// The SPF result of MAIL FROM, when SPF ran there (`checks.spf_fail_reject`); reused at
    /// the end of DATA.
    spf: Option<Box<SpfOutcome>>,
    /// A content filter said to discard it: the client still gets its 250, nothing is stored.
    discard: bool,
}

/// Where the session stands in a mail transaction. The transaction is boxed: an idle session
/// keeps only the pointer (10,000 idle connections must fit in 60 MB).
#[derive(Debug, Clone)]
enum State {
    /// No transaction open (before MAIL, or after RSET / end of DATA).
    Idle,
    /// MAIL is being answered: its SPF check ([`Action::CheckSpf`]) is out.
    CheckingSpf(Box<Transaction>),
    /// MAIL accepted, collecting recipients.
    Mail(Box<Transaction>),
    /// DATA accepted (354 sent); the driver feeds the message.
    Data(Box<Transaction>),
    /// A BDAT was accepted (RFC 3030): the message arrives in chunks, the connection keeps
    /// what came so far, the chunk with LAST ends it.
    Bdat(Box<Transaction>),
}

/// What the driver must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Send the 354 and read the message with a DATA decoder.
    StartData(Reply),
    /// Send the 220 and run the TLS handshake; discard everything buffered.
    StartTls(Reply),
    /// Send the reply and close the connection.
    Close(Reply),
    /// Check these credentials off the async threads, then call [`Session::auth_verified`].
    Verify(Credentials),
    /// Check SPF for this MAIL FROM (RFC 7208), then call [`Session::spf_checked`].
    CheckSpf(SpfQuery),
    /// Ask the content filters (`[[milters]]`) about this step, then call
    /// [`Session::filtered`]; the session's reply to the command waits for their verdict.
    Filter(FilterStep),
}

/// What a BDAT command (RFC 3030) asks of the connection, taken with
/// [`Session::take_chunk`] after the command's [`Action`]: read the `size` octets that follow
/// the command line, raw. Accepted (`refused` is `None`): they are the next part of the
/// message, and LAST ends it. Refused: they are read and dropped (never taken for commands:
/// RFC 3030 3), and the reply follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub size: u64,
    pub last: bool,
    pub refused: Option<Reply>,
}

/// A command the session would accept, shown to the content filters first. Only what the
/// session accepted is shown: a filter never sees a recipient tern refused itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterStep {
    Helo {
        name: String,
    },
    Mail {
        /// The queue id the message will have (milter macro `i`).
        id: String,
        /// The reverse-path with its angle brackets, `<>` for the null sender.
        from: String,
        /// The ESMTP parameters, e.g. `SIZE=1234`.
        args: Vec<String>,
    },
    Rcpt {
        /// The forward path with its angle brackets.
        to: String,
    },
    Data,
}

/// What the content filters decided about a [`FilterStep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterVerdict {
    /// The command gets the session's own reply.
    Continue,
    /// The command gets this reply instead (4xx or 5xx) and changes nothing.
    Reject(Reply),
    /// The command is accepted, and the message will be dropped after its 250.
    Discard,
}

/// The effect of a command held back while the filters decide about it.
#[derive(Debug, Clone)]
enum Pending {
    Helo(Helo, Reply),
    Mail(Box<Transaction>),
    Rcpt(AcceptedRecipient),
    Data,
    /// The first BDAT of a transaction (shown to the filters as DATA).
    Bdat {
        size: u64,
        last: bool,
    },
}

/// What SPF at MAIL FROM checks: the client address, its HELO name and the reverse-path
/// (without brackets, empty for `<>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfQuery {
    pub ip: IpAddr,
    pub helo: String,
    pub mail_from: String,
}

/// A multi-step AUTH exchange waiting for the client's next line (RFC 4954 4).
#[derive(Debug, Clone)]
enum AuthExchange {
    /// `AUTH PLAIN` without initial response: waiting for the credentials.
    Plain,
    LoginUser,
    LoginPassword(String),
}

/// What the connection measured of a message while it streamed in, for the end-of-data checks
/// (see `tern_proto::HeaderScanner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFacts {
    /// `HeaderSection::end` of the message: octets up to and including the empty line.
    pub header_end: u64,
    /// `Received:` fields in the header section.
    pub received: usize,
    /// Every octet is ASCII.
    pub ascii: bool,
}

impl MessageFacts {
    /// The facts of a message held in memory.
    pub fn of(message: &[u8]) -> Self {
        let header = HeaderSection::find(message);
        Self {
            header_end: header.end() as u64,
            received: header.received_count(),
            ascii: message.is_ascii(),
        }
    }
}

pub enum DataEnd {
    Reject(Reply),
    Store(Accepted),
    /// A content filter said to discard the message: the client gets this 250, nothing is
    /// stored.
    Discard(Reply),
}

pub struct Session {
    cfg: Arc<Config>,
    conn: ConnInfo,
    helo: Option<Helo>,
    state: State,
    errors: u32,
    /// NOOP, RSET, HELP, VRFY, EXPN, HELO and EHLO so far; past `limits.max_junk_commands`
    /// each one counts as an error, so a client cannot hold a slot for free.
    junk: usize,
    authenticated: Option<String>,
    /// The AUTH attempt whose password is being checked ([`Action::Verify`] is out).
    auth_attempt: Option<AuthAttempt>,
    auth_exchange: Option<AuthExchange>,
    tracker: Arc<ClientTracker>,
    /// The queue id of the message handed to the store and not yet answered: the reply to the
    /// end of data waits for [`Session::stored`].
    storing: Option<String>,
    /// Set while free disk space is below `limits.min_free_space` ([`crate::disk`]).
    low_space: LowSpace,
    /// The server's new-mailbox caps; `None` until needed when no server shares one (then
    /// this session gets its own, so the caps are never off).
    mailbox_cap: Option<Arc<MailboxCap>>,
    /// Some `[[milters]]` entry applies to this listener: HELO, MAIL, RCPT and DATA are shown
    /// to the filters before they are answered.
    filtered: bool,
    /// The command whose reply waits for [`Session::filtered`].
    pending: Option<Pending>,
    /// The SASL mechanism of the last AUTH (milter macro `{auth_type}`).
    auth_mechanism: Option<&'static str>,
    /// A BDAT of the last transaction failed (too large, refused by a filter): the transaction
    /// is over, and the BDATs the client pipelined behind it get 503 5.5.1 (not counted as
    /// errors) until MAIL, RSET or HELO/EHLO.
    bdat_failed: bool,
    /// The chunk the last BDAT asks the connection to read ([`Session::take_chunk`]).
    chunk: Option<Chunk>,
}

impl Session {
    /// A session that counts alone (tests, `tern explain`), by its config's limits.
    pub fn new(cfg: Arc<Config>, conn: ConnInfo) -> Self {
        let tracker = Arc::new(ClientTracker::for_limits(&cfg.limits));
        Self::sharing(cfg, conn, tracker)
    }

    /// A session whose per-client counters (message rate, AUTH failures) are the server's,
    /// shared with every other session: what the listener builds for each connection.
    pub fn sharing(cfg: Arc<Config>, conn: ConnInfo, tracker: Arc<ClientTracker>) -> Self {
        Self {
            cfg,
            conn,
            helo: None,
            state: State::Idle,
            errors: 0,
            junk: 0,
            authenticated: None,
            auth_attempt: None,
            auth_exchange: None,
            tracker,
            storing: None,
            low_space: LowSpace::default(),
            mailbox_cap: None,
            filtered: false,
            pending: None,
            auth_mechanism: None,
            bdat_failed: false,
            chunk: None,
        }
        .with_filters()
    }

    /// Whether the `[[milters]]` apply to this listener.
    fn with_filters(mut self) -> Self {
        let listener = match self.conn.kind {
            ListenerKind::Smtp => MilterListener::Smtp,
            ListenerKind::Submission => MilterListener::Submission,
            ListenerKind::Submissions => MilterListener::Submissions,
        };
        self.filtered = self.cfg.milters.iter().any(|m| m.applies_to(listener));
        self
    }

    /// The content filters' verdict on the step of [`Action::Filter`]: the held-back reply
    /// goes out and the command takes effect, or the filter's reply goes out and the command
    /// changes nothing (a refused MAIL opens no transaction, a refused RCPT adds no
    /// recipient, a refused DATA leaves the transaction waiting for another DATA or RSET).
    /// Not counted as client errors: the client made no protocol mistake.
    pub fn filtered(&mut self, verdict: FilterVerdict) -> Action {
        let Some(pending) = self.pending.take() else {
            return Action::Reply(replies::local_error());
        };
        let discard = verdict == FilterVerdict::Discard;
        match (pending, verdict) {
            (Pending::Helo(_, _), FilterVerdict::Reject(r)) => Action::Reply(r),
            (Pending::Helo(helo, reply), _) => {
                self.helo = Some(helo);
                Action::Reply(reply)
            }
            (Pending::Mail(_), FilterVerdict::Reject(r)) => Action::Reply(r),
            (Pending::Mail(mut txn), _) => {
                txn.discard = discard;
                self.state = State::Mail(txn);
                Action::Reply(replies::sender_ok())
            }
            (Pending::Rcpt(rcpt), verdict) => {
                let State::Mail(txn) = &mut self.state else {
                    return Action::Reply(replies::local_error());
                };
                if let FilterVerdict::Reject(r) = verdict {
                    txn.rejected += 1;
                    return Action::Reply(r);
                }
                txn.discard |= discard;
                txn.recipients.push(rcpt);
                Action::Reply(replies::recipient_ok())
            }
            (Pending::Bdat { size, last }, FilterVerdict::Reject(r)) => {
                // Unlike a refused DATA, the chunk's octets are already on their way: the
                // transaction is over, and the chunks behind it are refused too.
                self.state = State::Idle;
                self.bdat_failed = true;
                self.refuse_chunk(size, last, Action::Reply(r))
            }
            (Pending::Bdat { size, last }, _) => {
                match std::mem::replace(&mut self.state, State::Idle) {
                    State::Mail(mut txn) => {
                        txn.discard |= discard;
                        self.state = State::Bdat(txn);
                        self.accept_chunk(size, last)
                    }
                    other => {
                        self.state = other;
                        self.refuse_chunk(size, last, Action::Reply(replies::local_error()))
                    }
                }
            }
            (Pending::Data, verdict) => {
                if let FilterVerdict::Reject(r) = verdict {
                    return Action::Reply(r);
                }
                match std::mem::replace(&mut self.state, State::Idle) {
                    State::Mail(mut txn) => {
                        txn.discard |= discard;
                        self.state = State::Data(txn);
                        Action::StartData(replies::start_data())
                    }
                    other => {
                        self.state = other;
                        Action::Reply(replies::local_error())
                    }
                }
            }
        }
    }

    /// MAIL passed every check of the session: the transaction opens, or waits for the
    /// filters.
    fn open_transaction(&mut self, txn: Box<Transaction>) -> Action {
        self.bdat_failed = false;
        if !self.filtered {
            self.state = State::Mail(txn);
            return Action::Reply(replies::sender_ok());
        }
        let step = FilterStep::Mail {
            id: txn.id.clone(),
            from: format!(
                "<{}>",
                txn.from
                    .address()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            args: txn
                .params
                .to_string()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        self.pending = Some(Pending::Mail(txn));
        Action::Filter(step)
    }

    /// Reads the server's free-space flag: while it is set, MAIL is answered 452 4.3.1.
    pub fn with_low_space(mut self, low_space: LowSpace) -> Self {
        self.low_space = low_space;
        self
    }

    /// Shares the new-mailbox caps (the per-minute count is server-wide).
    pub fn with_mailbox_cap(mut self, cap: Arc<MailboxCap>) -> Self {
        self.mailbox_cap = Some(cap);
        self
    }

    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The SASL mechanism the client authenticated with.
    pub fn auth_mechanism(&self) -> Option<&'static str> {
        self.authenticated.as_ref().and(self.auth_mechanism)
    }

    pub fn greeting(&self) -> Reply {
        replies::greeting(&self.cfg.hostname)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The open transaction, if any (for logging an aborted one).
    pub fn transaction(&self) -> Option<&Transaction> {
        match &self.state {
            State::CheckingSpf(t) | State::Mail(t) | State::Data(t) | State::Bdat(t) => Some(t),
            State::Idle => None,
        }
    }

    pub fn timeout_reply(&self) -> Reply {
        replies::timeout(&self.cfg.hostname)
    }

    pub fn shutdown_reply(&self) -> Reply {
        replies::shutting_down(&self.cfg.hostname)
    }

    /// RFC 3207 4.2: after the handshake the session starts over.
    pub fn tls_established(&mut self, description: String) {
        self.conn.tls = Some(description);
        self.helo = None;
        self.state = State::Idle;
        self.bdat_failed = false;
        self.authenticated = None;
    }

    /// A BDAT transaction is open: the connection holds the chunks received so far.
    pub fn in_bdat(&self) -> bool {
        matches!(self.state, State::Bdat(_))
    }

    /// The connection abandoned the BDAT message (a chunk took it over `max_message_size`):
    /// the transaction is over, and the client's next BDATs are refused until MAIL or RSET.
    pub fn bdat_failed(&mut self) {
        if self.in_bdat() {
            self.state = State::Idle;
            self.bdat_failed = true;
        }
    }

    fn relay_allowed(&self) -> bool {
        policy::relay_allowed(&self.cfg, self.authenticated.is_some(), self.conn.peer.ip())
    }

    /// An error reply counts toward `limits.max_errors`; past it the session is closed.
    fn error(&mut self, reply: Reply) -> Action {
        self.errors += 1;
        if self.errors >= self.cfg.limits.max_errors as u32 {
            Action::Close(replies::too_many_errors(&self.cfg.hostname))
        } else {
            Action::Reply(reply)
        }
    }

    /// A command that does no work for the client but costs a reply: free up to
    /// `limits.max_junk_commands` per session, an error after that (as Postfix's
    /// smtpd_junk_command_limit), so NOOP every few minutes cannot hold a slot forever.
    fn junk(&mut self, action: Action) -> Action {
        self.junk += 1;
        match action {
            Action::Reply(reply) if self.junk > self.cfg.limits.max_junk_commands => {
                self.error(reply)
            }
            other => other,
        }
    }

    /// Whom the per-client limits count: the address, or its IPv6 prefix.
    fn client(&self) -> ClientKey {
        ClientKey::new(self.conn.peer.ip(), self.cfg.limits.ipv6_prefix_length)
    }

    pub fn line_too_long(&mut self) -> Action {
        // RFC 4954 4: the server answers an AUTH exchange once. A 500 to an overlong response
        // is that answer, so the next line must be read as a command, never as a credential.
        self.auth_exchange = None;
        self.error(replies::line_too_long())
    }

    pub fn handle_line(&mut self, line: &[u8]) -> Action {
        // The reader takes lines up to MAX_PARAM_LINE for MAIL and RCPT with DSN or AUTH=
        // parameters; any other line (an AUTH response too) over 512 octets is too long.
        let within = if self.auth_exchange.is_some() {
            line.len() + 2 <= tern_proto::MAX_COMMAND_LINE
        } else {
            Command::may_be_long(line)
        };
        if !within {
            return self.line_too_long();
        }
        if let Some(exchange) = self.auth_exchange.take() {
            return self.auth_response(exchange, line);
        }
        if self.helo.is_none() && looks_like_http(line) {
            return Action::Close(replies::http_refused(&self.cfg.hostname));
        }
        match Command::parse(line) {
            Ok(cmd) => self.handle(cmd),
            // A malformed BDAT: how many octets follow is unknown, so whatever does would be
            // read as commands. The connection is closed instead (Postfix does the same).
            Err(e) if is_bdat(line) => Action::Close(self.parse_error_reply(&e)),
            Err(e) => {
                let reply = self.parse_error_reply(&e);
                self.error(reply)
            }
        }
    }

    fn parse_error_reply(&self, e: &CommandError) -> Reply {
        match e {
            CommandError::Unrecognized => replies::unrecognized(),
            CommandError::Syntax(why) => replies::syntax(why),
            CommandError::BadSender(AddressError::ControlCharacter(_))
            | CommandError::BadRecipient(AddressError::ControlCharacter(_)) => {
                replies::address_control_character()
            }
            CommandError::BadSender(a) => replies::bad_sender(&address_error_text(a)),
            CommandError::BadRecipient(a) => replies::bad_recipient(&address_error_text(a)),
            CommandError::UnsupportedParam(p) => replies::unsupported_param(p),
            CommandError::BadParamValue(p) => replies::bad_param_value(p),
        }
    }

    pub fn handle(&mut self, cmd: Command) -> Action {
        match cmd {
            Command::Helo(name) => {
                let action = self.helo(name, false);
                self.junk(action)
            }
            Command::Ehlo(name) => {
                let action = self.helo(name, true);
                self.junk(action)
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.state = State::Idle;
                self.bdat_failed = false;
                self.junk(Action::Reply(replies::ok()))
            }
            Command::Noop => self.junk(Action::Reply(replies::ok())),
            Command::Quit => Action::Close(replies::quit(&self.cfg.hostname)),
            Command::Vrfy(arg) => {
                let action = self.vrfy(&arg);
                self.junk(action)
            }
            Command::Expn(arg) => {
                let action = self.expn(&arg);
                self.junk(action)
            }
            Command::Help(topic) => self.junk(Action::Reply(replies::help(topic.as_deref()))),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
            Command::Obsolete(verb) => self.error(replies::obsolete(verb)),
            Command::Turn => self.error(replies::turn()),
        }
    }

    fn helo(&mut self, name: String, esmtp: bool) -> Action {
        // RFC 5321 4.1.4: HELO/EHLO also resets any transaction.
        self.state = State::Idle;
        self.bdat_failed = false;
        let reply = if esmtp {
            replies::ehlo(&self.cfg.hostname, &name, self.extensions())
        } else {
            replies::helo(&self.cfg.hostname)
        };
        if self.filtered {
            let step = FilterStep::Helo { name: name.clone() };
            self.pending = Some(Pending::Helo(Helo { name, esmtp }, reply));
            return Action::Filter(step);
        }
        self.helo = Some(Helo { name, esmtp });
        Action::Reply(reply)
    }

    fn extensions(&self) -> Vec<String> {
        let mut ext = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.limits.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
            // RFC 3461: NOTIFY, ORCPT, RET and ENVID are kept, passed on and honoured.
            "DSN".to_string(),
            // RFC 3030: BDAT. Its chunks are counted, not scanned, so no end-of-data marker
            // can be smuggled into them.
            "CHUNKING".to_string(),
        ];
        if self.conn.tls_available && self.conn.tls.is_none() {
            ext.push("STARTTLS".to_string());
        }
        if self.conn.tls.is_some() {
            // RFC 8689 4.1: only over TLS.
            ext.push("REQUIRETLS".to_string());
        }
        if self.auth_offered() {
            ext.push("AUTH PLAIN LOGIN".to_string());
        }
        ext.push("HELP".to_string());
        ext
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Action {
        let Some(helo) = &self.helo else {
            return self.error(replies::need_helo());
        };
        if !matches!(self.state, State::Idle) {
            return self.error(replies::nested_mail());
        }
        // RFC 6409 4.3: the submission ports take mail from authenticated users only.
        if self.conn.kind != ListenerKind::Smtp && self.authenticated.is_none() {
            return Action::Reply(replies::auth_required());
        }
        if let (Some(user), Some(addr)) = (&self.authenticated, from.address()) {
            if self.cfg.submission.enforce_sender && !addr.lookup_key().eq_ignore_ascii_case(user) {
                return Action::Reply(replies::sender_not_owned(&addr.to_string()));
            }
        }
        // RFC 5321 4.2.2 / RFC 3463 X.3.1: below `limits.min_free_space` no new transaction
        // starts (the client retries later); those already open, the relay and the bounces go
        // on and free the space. Checked before the rate limit, so a refusal costs no quota.
        if self.low_space.is_low() {
            return Action::Reply(replies::storage_full());
        }
        let ip = self.conn.peer.ip();
        if self.authenticated.is_none()
            && !self.cfg.is_trusted(ip)
            && !self.tracker.allow_message(
                self.client(),
                self.cfg.limits.max_messages_per_ip_per_minute,
            )
        {
            return Action::Reply(replies::rate_limited());
        }
        // RFC 1870 6: a declared size over the limit is refused at MAIL.
        if params
            .size
            .is_some_and(|s| s > self.cfg.limits.max_message_size)
        {
            return Action::Reply(replies::too_big());
        }
        // RFC 6531 3.4: non-ASCII envelope addresses only with SMTPUTF8 (and only over EHLO).
        if from.address().is_some_and(|a| !a.is_ascii()) && !(params.smtputf8 && helo.esmtp) {
            return Action::Reply(replies::utf8_required());
        }
        // RFC 4954 5: AUTH= is an extension parameter, valid only where AUTH is offered.
        if params.auth.is_some() && !(self.authenticated.is_some() || self.auth_offered()) {
            return self.error(replies::unsupported_param("AUTH"));
        }
        if (params.smtputf8 || params.body.is_some()) && !helo.esmtp {
            return self.error(replies::unsupported_param(if params.smtputf8 {
                "SMTPUTF8"
            } else {
                "BODY"
            }));
        }
        // RFC 3461 4: RET and ENVID only after EHLO.
        if (params.ret.is_some() || params.envid.is_some()) && !helo.esmtp {
            return self.error(replies::unsupported_param(if params.ret.is_some() {
                "RET"
            } else {
                "ENVID"
            }));
        }
        // RFC 8689 4.1: REQUIRETLS is offered only on a TLS session.
        if params.requiretls && self.conn.tls.is_none() {
            return self.error(replies::unsupported_param("REQUIRETLS"));
        }
        let helo_name = helo.name.clone();
        let txn = Transaction {
            id: new_queue_id(),
            from,
            params,
            recipients: Vec::new(),
            rejected: 0,
            new_mailboxes: NewMailboxes::default(),
            spf: None,
            discard: false,
        };
        // SPF at MAIL FROM only when its fail is refused here (RFC 7372 3.2: 550 5.7.23);
        // otherwise it runs with the other checks at the end of DATA, once.
        let checks = self.cfg.checks;
        if self.verifies_inbound() && checks.spf && checks.spf_fail_reject {
            let query = SpfQuery {
                ip,
                helo: helo_name,
                mail_from: txn
                    .from
                    .address()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            };
            self.state = State::CheckingSpf(Box::new(txn));
            return Action::CheckSpf(query);
        }
        self.open_transaction(Box::new(txn))
    }

    /// The outcome of [`Action::CheckSpf`] (`None`: no verifier, or SPF off): a `fail` refused
    /// by `checks.spf_fail_reject` is 550 5.7.23 and no transaction opens; anything else opens
    /// it with the result kept for the end of DATA. Not counted as an error: the client made
    /// no protocol mistake.
    pub fn spf_checked(&mut self, outcome: Option<SpfOutcome>) -> Action {
        let State::CheckingSpf(mut txn) = std::mem::replace(&mut self.state, State::Idle) else {
            return Action::Reply(replies::local_error());
        };
        if let Some(SpfVerdict::Reject(reply)) = outcome.as_ref().map(|o| &o.verdict) {
            return Action::Reply(replies::auth_refused(reply));
        }
        txn.spf = outcome.map(Box::new);
        self.open_transaction(txn)
    }

    /// Inbound verification applies: port 25, a client that neither authenticated nor is in
    /// `relay.trusted_networks` (their mail is ours, and signed, not checked).
    fn verifies_inbound(&self) -> bool {
        self.conn.kind == ListenerKind::Smtp
            && self.authenticated.is_none()
            && !self.cfg.is_trusted(self.conn.peer.ip())
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Action {
        let relay_allowed = self.relay_allowed();
        let max = self.cfg.limits.max_recipients;
        // RFC 3461 4: NOTIFY and ORCPT are DSN parameters, offered only after EHLO.
        if params != RcptParams::default() && !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.error(replies::unsupported_param(if params.notify.is_some() {
                "NOTIFY"
            } else {
                "ORCPT"
            }));
        }
        let State::Mail(txn) = &mut self.state else {
            return self.error(if self.helo.is_none() {
                replies::need_helo()
            } else {
                replies::need_mail()
            });
        };
        if let ForwardPath::Mailbox(a) = &to {
            if !a.is_ascii() && !txn.params.smtputf8 {
                return Action::Reply(replies::utf8_required());
            }
        }
        // RFC 5321 4.5.3.1.10: refuse the excess with 452, keep the ones already accepted.
        if txn.recipients.len() >= max {
            return Action::Reply(replies::too_many_recipients());
        }
        let display = match &to {
            ForwardPath::Postmaster => policy::postmaster_address(&self.cfg).to_string(),
            ForwardPath::Mailbox(a) => a.to_string(),
        };
        match policy::decide_recipient(&self.cfg, &to, relay_allowed) {
            RcptDecision::Accept(targets) => {
                let cap = self
                    .mailbox_cap
                    .get_or_insert_with(|| Arc::new(MailboxCap::new(&self.cfg)));
                // A catch-all recipient whose mailbox does not exist yet counts against the
                // new-mailbox caps; beyond them, 450 4.2.0 (the earlier recipients stay). Not an
                // error: the client did nothing wrong and retries later.
                if cap.admit(&targets, &mut txn.new_mailboxes).is_err() {
                    return Action::Reply(replies::mailbox_creation_limited(&display));
                }
                let rcpt = AcceptedRecipient {
                    dsn: tern_queue::RcptDsn {
                        notify: params.notify.map(|n| tern_queue::NotifyOn {
                            success: n.success,
                            failure: n.failure,
                            delay: n.delay,
                        }),
                        orcpt: params
                            .orcpt
                            .map(|o| format!("{};{}", o.addr_type, o.address)),
                    },
                    address: display,
                    targets,
                };
                if self.filtered {
                    let step = FilterStep::Rcpt {
                        to: format!("<{}>", rcpt.address),
                    };
                    self.pending = Some(Pending::Rcpt(rcpt));
                    return Action::Filter(step);
                }
                txn.recipients.push(rcpt);
                Action::Reply(replies::recipient_ok())
            }
            // Rejected recipients count as errors: otherwise a client could try addresses
            // without end (harvesting) and hold its slot doing it.
            RcptDecision::NoSuchUser => {
                txn.rejected += 1;
                self.error(replies::no_such_user(&display))
            }
            RcptDecision::RelayDenied => {
                txn.rejected += 1;
                self.error(replies::relay_denied(&display))
            }
        }
    }

    fn data(&mut self) -> Action {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Mail(txn) if !txn.recipients.is_empty() && self.filtered => {
                self.state = State::Mail(txn);
                self.pending = Some(Pending::Data);
                Action::Filter(FilterStep::Data)
            }
            State::Mail(txn) if !txn.recipients.is_empty() => {
                self.state = State::Data(txn);
                Action::StartData(replies::start_data())
            }
            State::Bdat(txn) => {
                // RFC 3030 3: DATA after BDAT in the same transaction is a 503; the
                // transaction goes on.
                self.state = State::Bdat(txn);
                self.error(replies::data_after_bdat())
            }
            State::Mail(txn) => {
                // RFC 5321 3.3: DATA with no valid recipient is refused (503 or 554).
                let reply = if txn.rejected > 0 {
                    replies::no_valid_recipients()
                } else {
                    replies::need_rcpt()
                };
                self.state = State::Mail(txn);
                self.error(reply)
            }
            other => {
                let reply = if self.helo.is_none() {
                    replies::need_helo()
                } else {
                    replies::need_mail_before_data()
                };
                self.state = other;
                self.error(reply)
            }
        }
    }

    /// BDAT (RFC 3030 2): the octets that follow are the next chunk of the message. The first
    /// BDAT of a transaction is checked as DATA is (recipients, the filters' DATA step); in a
    /// refused one the octets are still read (and dropped) before the reply.
    fn bdat(&mut self, size: u64, last: bool) -> Action {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Bdat(txn) => {
                self.state = State::Bdat(txn);
                self.accept_chunk(size, last)
            }
            State::Mail(txn) if !txn.recipients.is_empty() && self.filtered => {
                self.state = State::Mail(txn);
                self.pending = Some(Pending::Bdat { size, last });
                Action::Filter(FilterStep::Data)
            }
            State::Mail(txn) if !txn.recipients.is_empty() => {
                self.state = State::Bdat(txn);
                self.accept_chunk(size, last)
            }
            State::Mail(txn) => {
                let reply = if txn.rejected > 0 {
                    replies::no_valid_recipients()
                } else {
                    replies::need_rcpt_before_bdat()
                };
                self.state = State::Mail(txn);
                let action = self.error(reply);
                self.refuse_chunk(size, last, action)
            }
            State::Idle if self.bdat_failed => {
                self.refuse_chunk(size, last, Action::Reply(replies::bdat_after_failure()))
            }
            other => {
                // After DATA's 354 every octet is message data, so a BDAT can only be seen
                // outside a transaction here.
                let reply = if self.helo.is_none() {
                    replies::need_helo()
                } else {
                    replies::need_mail_before_bdat()
                };
                self.state = other;
                let action = self.error(reply);
                self.refuse_chunk(size, last, action)
            }
        }
    }

    /// The chunk is the next part of the message. The action's reply is what a chunk that is
    /// not the last gets once read; the connection sends it (or the end of the message's) then.
    fn accept_chunk(&mut self, size: u64, last: bool) -> Action {
        self.chunk = Some(Chunk {
            size,
            last,
            refused: None,
        });
        Action::Reply(replies::chunk_received(size))
    }

    /// The chunk is refused with the action's reply, sent once its octets are read; a close
    /// (too many errors) happens at once.
    fn refuse_chunk(&mut self, size: u64, last: bool, action: Action) -> Action {
        if let Action::Reply(r) = &action {
            self.chunk = Some(Chunk {
                size,
                last,
                refused: Some(r.clone()),
            });
        }
        action
    }

    /// The chunk the last command (a BDAT) asks the connection to read, if any. The command's
    /// [`Action`] is then a reply for the record only: the connection answers the chunk once
    /// its octets are in.
    pub fn take_chunk(&mut self) -> Option<Chunk> {
        self.chunk.take()
    }

    /// Called by the driver once the end-of-data marker was read, with the decoder's verdict
    /// and what was measured of the message as it streamed in (unstuffed, CRLF line endings,
    /// no trace header yet; the bytes themselves may be on disk already).
    pub fn finish_data(
        &mut self,
        verdict: Result<(), DataRejection>,
        message: &MessageFacts,
    ) -> DataEnd {
        let (State::Data(txn) | State::Bdat(txn)) = std::mem::replace(&mut self.state, State::Idle)
        else {
            return DataEnd::Reject(replies::need_mail());
        };
        match verdict {
            Err(DataRejection::BareLineEnding) => {
                return DataEnd::Reject(replies::bare_line_ending())
            }
            Err(DataRejection::TooLarge) => return DataEnd::Reject(replies::too_big()),
            Ok(()) => {}
        }
        // The limit counts the header section with its closing empty line.
        if message.header_end > self.cfg.limits.max_header_size {
            return DataEnd::Reject(replies::header_too_big());
        }
        // RFC 5321 6.3: counting Received headers is how loops are caught; refusing here
        // (rather than bouncing later) leaves the bounce to the client, and nothing is stored.
        // The stored copy carries one more, tern's own (below), and the relay refuses a copy
        // with more than the limit: so the session must refuse at the limit already, or a
        // message it accepted with 250 would bounce in the queue.
        if message.received >= self.cfg.queue.max_received_headers {
            return DataEnd::Reject(replies::mail_loop());
        }
        if txn.discard {
            return DataEnd::Discard(replies::queued(&txn.id));
        }
        let helo = self.helo.clone().unwrap_or(Helo {
            name: "unknown".into(),
            esmtp: false,
        });
        let single = (txn.recipients.len() == 1).then(|| txn.recipients[0].address.clone());
        let date = rfc5322_date(SystemTime::now());
        let received = received::received_header(&TraceInfo {
            helo: &helo.name,
            client_ip: self.conn.peer.ip(),
            hostname: &self.cfg.hostname,
            esmtp: helo.esmtp,
            tls: self.conn.tls.as_deref(),
            authenticated: self.authenticated.is_some(),
            smtputf8: txn.params.smtputf8,
            id: &txn.id,
            single_recipient: single.as_deref(),
            date: &date,
        });
        self.storing = Some(txn.id.clone());
        let inbound = if self.verifies_inbound() {
            Inbound::Verify { spf: txn.spf }
        } else {
            Inbound::Skip
        };
        DataEnd::Store(Accepted {
            dsn: tern_queue::MessageDsn {
                ret: txn.params.ret.map(|r| match r {
                    Ret::Full => tern_queue::DsnRet::Full,
                    Ret::Hdrs => tern_queue::DsnRet::Hdrs,
                }),
                envid: txn.params.envid.clone(),
            },
            requiretls: txn.params.requiretls,
            id: txn.id,
            sender: txn.from.address().map(|a| a.to_string()),
            recipients: txn.recipients,
            received,
            smtputf8: txn.params.smtputf8,
            eight_bit: !message.ascii || txn.params.body == Some(BodyType::EightBitMime),
            helo: helo.name,
            client_ip: self.conn.peer.ip(),
            // Ours to DKIM-sign: the mail of our users and of the hosts we relay for.
            sign: self.authenticated.is_some() || self.cfg.is_trusted(self.conn.peer.ip()),
            inbound,
            via: Box::new(tern_delivery::Via {
                listener: self.conn.kind.name(),
                tls: self.conn.tls.clone(),
                auth: self.authenticated.clone(),
                checks: None,
            }),
        })
    }

    /// The reply to the end of data once the store has answered for the message
    /// [`Session::finish_data`] handed out (RFC 5321 4.2.5: the 250 only once the message is
    /// safe). A full disk is 452 4.3.1 and other temporary trouble 451 4.3.0, both of which the
    /// client retries; a message the store can never take is 554 5.3.0 (RFC 3463). A message
    /// verification refused gets the engine's reply (550 5.7.1 or 451 4.7.1, RFC 7489 6.6.3).
    pub fn stored(&mut self, result: Result<(), NotStored>) -> Reply {
        let Some(id) = self.storing.take() else {
            // No message was handed out: nothing can have been stored.
            return replies::local_error();
        };
        match result {
            Ok(()) => replies::queued(&id),
            Err(NotStored::Store(StoreError::StorageFull(_))) => replies::storage_full(),
            Err(NotStored::Store(StoreError::Temporary(_))) => replies::local_error(),
            Err(NotStored::Store(StoreError::Permanent(_))) => replies::store_refused(),
            Err(NotStored::Refused(r)) => replies::auth_refused(&r.reply),
            Err(NotStored::Filtered(r)) => r,
        }
    }

    fn vrfy(&mut self, arg: &str) -> Action {
        if !self.cfg.local.vrfy {
            return Action::Reply(replies::vrfy_ambiguous());
        }
        match policy::verify(&self.cfg, arg) {
            Some(addr) => Action::Reply(replies::vrfy_ok(&addr)),
            None => Action::Reply(replies::no_such_user(arg.trim_matches(['<', '>']))),
        }
    }

    fn expn(&mut self, arg: &str) -> Action {
        if !self.cfg.local.expn {
            return Action::Reply(replies::expn_disabled());
        }
        match policy::expand(&self.cfg, arg) {
            Some(members) if !members.is_empty() => Action::Reply(replies::expn_list(&members)),
            _ => Action::Reply(replies::no_such_user(arg.trim_matches(['<', '>']))),
        }
    }

    fn starttls(&mut self) -> Action {
        if !self.conn.tls_available || self.conn.tls.is_some() {
            return self.error(replies::tls_unavailable());
        }
        Action::StartTls(Reply::new(
            220,
            tern_proto::ec(2, 0, 0),
            "Ready to start TLS",
        ))
    }
}

impl Session {
    /// AUTH is offered over TLS only (RFC 4954 4: no plaintext passwords), unless the
    /// submission port is configured otherwise, and only when some user has a password.
    fn auth_offered(&self) -> bool {
        let has_passwords = self.cfg.users.iter().any(|u| u.password.is_some());
        let channel_ok = self.conn.tls.is_some()
            || (self.conn.kind == ListenerKind::Submission
                && !self.cfg.submission.require_tls_for_auth);
        has_passwords && channel_ok && self.authenticated.is_none()
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Action {
        if self.helo.is_none() {
            return self.error(replies::need_helo());
        }
        if self.authenticated.is_some() {
            return self.error(replies::auth_twice());
        }
        if !matches!(self.state, State::Idle) {
            return self.error(replies::auth_in_transaction());
        }
        if !self.auth_offered() {
            let has_passwords = self.cfg.users.iter().any(|u| u.password.is_some());
            return self.error(if has_passwords && self.conn.tls.is_none() {
                replies::auth_needs_tls()
            } else {
                replies::auth_unavailable()
            });
        }
        if self.locked_out() {
            return Action::Close(replies::auth_too_many_failures(&self.cfg.hostname));
        }
        self.auth_mechanism = match mechanism {
            "PLAIN" => Some("PLAIN"),
            "LOGIN" => Some("LOGIN"),
            _ => None,
        };
        match (mechanism, initial) {
            // RFC 4954 4: "=" is an empty initial response.
            ("PLAIN", Some(resp)) if resp != "=" => self.auth_plain(resp),
            ("PLAIN", _) => {
                self.auth_exchange = Some(AuthExchange::Plain);
                Action::Reply(replies::auth_challenge(""))
            }
            ("LOGIN", Some(resp)) => self.auth_response(AuthExchange::LoginUser, resp.as_bytes()),
            ("LOGIN", None) => {
                self.auth_exchange = Some(AuthExchange::LoginUser);
                Action::Reply(replies::auth_challenge(&sasl::encode_base64(b"Username:")))
            }
            _ => self.error(replies::auth_mechanism()),
        }
    }

    /// A client at `limits.max_auth_failures` (within the tracker's memory window) gets no
    /// more password checks on any connection: otherwise the limit would cost an attacker only
    /// a reconnect, and parallel connections would multiply the guessing rate.
    fn locked_out(&self) -> bool {
        self.tracker.auth_failures(self.client()) as usize >= self.cfg.limits.max_auth_failures
    }

    /// Hands credentials to the driver, unless the client was locked out meanwhile (by another
    /// connection failing while this exchange was open) or the user name is locked. The attempt
    /// is counted as a failure now, before the check: parallel guesses are all counted before
    /// any is answered, and a guess abandoned during the delay still counts.
    fn verify(&mut self, creds: Credentials) -> Action {
        let limits = &self.cfg.limits;
        match self.tracker.begin_auth(
            self.client(),
            &creds.username,
            limits.max_auth_failures,
            limits.max_auth_failures_per_user,
        ) {
            Ok(attempt) => {
                self.auth_attempt = Some(attempt);
                Action::Verify(creds)
            }
            Err(AuthRefused::ClientLocked) => {
                Action::Close(replies::auth_too_many_failures(&self.cfg.hostname))
            }
            Err(AuthRefused::UserLocked { client_failures }) => {
                if client_failures as usize >= limits.max_auth_failures {
                    Action::Close(replies::auth_too_many_failures(&self.cfg.hostname))
                } else {
                    self.error(replies::auth_user_locked())
                }
            }
        }
    }

    fn auth_plain(&mut self, resp: &str) -> Action {
        match sasl::decode_plain(resp) {
            Ok(creds) => self.verify(creds),
            Err(_) => self.error(replies::auth_bad_base64()),
        }
    }

    fn auth_response(&mut self, exchange: AuthExchange, line: &[u8]) -> Action {
        let text = String::from_utf8_lossy(line);
        if sasl::is_cancel(&text) {
            return self.error(replies::auth_cancelled());
        }
        match exchange {
            AuthExchange::Plain => self.auth_plain(&text),
            AuthExchange::LoginUser => match sasl::decode_login_step(&text) {
                Ok(user) if !user.is_empty() => {
                    self.auth_exchange = Some(AuthExchange::LoginPassword(user));
                    Action::Reply(replies::auth_challenge(&sasl::encode_base64(b"Password:")))
                }
                _ => self.error(replies::auth_bad_base64()),
            },
            AuthExchange::LoginPassword(username) => match sasl::decode_login_step(&text) {
                Ok(password) => self.verify(Credentials {
                    authzid: None,
                    username,
                    password,
                }),
                Err(_) => self.error(replies::auth_bad_base64()),
            },
        }
    }

    /// The outcome of [`Action::Verify`]. The attempt was counted as a failure when it began;
    /// a success takes that back and clears the user name's failures (only that name's: one
    /// valid login must not reopen guessing at other accounts). At
    /// `limits.max_auth_failures` the connection is closed.
    pub fn auth_verified(&mut self, user: Option<String>) -> Action {
        let attempt = self.auth_attempt.take();
        match user {
            Some(user) => {
                if let Some(a) = &attempt {
                    self.tracker.auth_succeeded(a);
                }
                self.authenticated = Some(user);
                Action::Reply(replies::auth_ok())
            }
            None => {
                let failures = self.tracker.auth_failures(self.client());
                if failures as usize >= self.cfg.limits.max_auth_failures {
                    Action::Close(replies::auth_too_many_failures(&self.cfg.hostname))
                } else {
                    self.error(replies::auth_failed())
                }
            }
        }
    }

    /// No password check could be started (all `limits.max_auth_checks` are busy): 454, and
    /// the attempt counts for nobody, since no password was looked at.
    pub fn auth_busy(&mut self) -> Action {
        if let Some(a) = self.auth_attempt.take() {
            self.tracker.auth_abandoned(&a);
        }
        self.error(replies::auth_busy())
    }

    /// How long the driver waits before answering a failure of the attempt being checked:
    /// grows with the failures of the client and of the user name before it.
    pub fn auth_delay(&self) -> std::time::Duration {
        self.auth_attempt
            .as_ref()
            .map_or(std::time::Duration::ZERO, |a| a.delay)
    }
}

/// `GET / HTTP/1.1`, `POST ...`, `CONNECT host:443 HTTP/1.1`: an HTTP client (or a browser
/// tricked into a cross-protocol request) talking to the SMTP port.
fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"CONNECT ",
        b"HEAD ",
        b"PUT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
    ];
    METHODS
        .iter()
        .any(|m| line.len() >= m.len() && line[..m.len()].eq_ignore_ascii_case(m))
}

/// The line is a BDAT command (whatever its arguments).
fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && line.get(4).is_none_or(|&b| b == b' ')
}

fn address_error_text(e: &AddressError) -> String {
    e.to_string()
}

/// Time-ordered, unique across restarts and nodes (UUID v7), safe as a file name.
pub fn new_queue_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests;
