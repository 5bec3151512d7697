//! tern delivery: where accepted mail ends up (Maildir now; the router and remote delivery later).

pub mod maildir;
