//! What happens to a message once it is accepted: the router decides where each recipient's
//! copy goes ([`router`]), intake stores an accepted message before the 250 ([`intake`]),
//! local delivery writes Maildir copies with their trace prefix ([`local`], [`maildir`]),
//! [`mailbox_cap`] bounds the mailboxes a catch-all lets clients create, [`srs`] rewrites the
//! sender of forwarded mail (and routes its bounces back), and
//! [`dsn`] builds RFC 3464 delivery status notifications; [`checks`] verifies inbound port-25
//! mail (SPF, DKIM, ARC, DMARC) before intake stores it.

mod accepted;
pub mod checks;
pub mod dsn;
mod forward;
pub mod intake;
pub mod local;
pub mod mailbox_cap;
pub mod maildir;
pub mod notify;
pub mod router;
pub mod srs;

pub use accepted::Via;
pub use checks::{Inbound, NotStored, Refusal, Stored};
pub use intake::{Accepted, AcceptedRecipient, Intake, MessageStore};
pub use local::{Delivered, LocalDelivery};
pub use router::{RcptDecision, Target};
