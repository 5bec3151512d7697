//! tern delivery: where accepted mail ends up (Maildir now; the router and remote delivery later),
//! and the delivery status notifications (bounces) sent when it cannot get there.

pub mod dsn;
pub mod maildir;
