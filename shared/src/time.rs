//! Wall-clock timestamps for records people read (`created_at`, `at`).
//! Decisions never compare wall clocks of two machines; those use monotonic
//! clocks where they are made.

use time::OffsetDateTime;

/// Now, in UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Serde helpers: RFC 3339 on the wire.
pub use time::serde::rfc3339;
