//! The one error type of `zf`: what went wrong, what to do about it, and the
//! exit code each kind of failure gives (listed in `zf --help`).

use std::fmt;

/// A failure of a `zf` command. Its `Display` is the whole text printed to
/// stderr: what was wrong and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments, or an input file that cannot be read or parsed (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The operation ran and failed or was cancelled (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A step on this machine failed, e.g. writing a file (exit 1).
    #[error("{0}")]
    Local(String),
    /// The API refused the request with a 4xx status (exit 3).
    #[error("{0}")]
    Refused(ApiRefusal),
    /// The API answered with a 5xx status or with something unreadable (exit 4).
    #[error("the API at {url} failed ({status} {code}): {message}\n  hint: check the management service's log, and that nats-server and the agent nodes run")]
    Server {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer from the API at all (exit 4).
    #[error("cannot reach the zerofoot API at {url}: {reason}\n  hint: check that zf-management runs there, or point zf at it with --url / ZF_URL")]
    Unreachable { url: String, reason: String },
    /// Standard output was closed (e.g. `zf op ls | head`): nothing more to print.
    #[error("standard output is closed")]
    Closed,
}

/// The exit code of Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Failed(_) | Self::Local(_) => 1,
            Self::Usage(_) => 2,
            Self::Refused(_) => 3,
            Self::Server { .. } | Self::Unreachable { .. } => 4,
        }
    }

    /// Whether following a stream should try again: the server may come back
    /// (unreachable, 5xx) or a slot may free up (429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Server { .. } | Self::Unreachable { .. } => true,
            Self::Refused(refusal) => refusal.status == 429,
            _ => false,
        }
    }
}

/// A 4xx answer: `{"error": {"code", "message", "violations"?}}`.
#[derive(Debug)]
pub struct ApiRefusal {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Every entry of `error.violations` (a params schema check), one a line.
    pub violations: Vec<String>,
}

impl ApiRefusal {
    /// What to do about it, where the API's message may not say.
    fn hint(&self) -> Option<&'static str> {
        Some(match (self.status, self.code.as_str()) {
            (401, _) => "set ZF_TOKEN, or --token-file / ZF_TOKEN_FILE, to an API token of this cluster",
            (403, "forbidden") => "use a token whose role may do this: viewer reads, operator also runs and cancels operations, admin also manages modules and resources",
            (404, "no_such_route") => "this management instance has no such endpoint: it may be older than this zf",
            (422, "invalid_params") => "`zf module show MODULE` shows each operation's params schema",
            (429, _) => "wait for some of this client's operations or event streams to end, or ask for a higher limit",
            _ => return None,
        })
    }
}

impl fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the API refused the request ({} {}): {}",
            self.status, self.code, self.message
        )?;
        for violation in &self.violations {
            write!(f, "\n  - {violation}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_exit_code() {
        let refusal = |status| {
            CliError::Refused(ApiRefusal {
                status,
                code: "x".into(),
                message: "m".into(),
                violations: vec![],
            })
        };
        assert_eq!(CliError::Failed("f".into()).exit_code(), 1);
        assert_eq!(CliError::Usage("u".into()).exit_code(), 2);
        assert_eq!(refusal(404).exit_code(), 3);
        let down = CliError::Unreachable {
            url: "u".into(),
            reason: "r".into(),
        };
        assert_eq!(down.exit_code(), 4);
        assert!(down.is_transient() && refusal(429).is_transient());
        assert!(!refusal(404).is_transient());
    }

    #[test]
    fn a_refusal_lists_every_violation() {
        let text = ApiRefusal {
            status: 422,
            code: "invalid_params".into(),
            message: "params do not match".into(),
            violations: vec!["a is missing".into(), "b is too small".into()],
        }
        .to_string();
        assert!(text.contains("422 invalid_params"), "{text}");
        assert!(
            text.contains("\n  - a is missing\n  - b is too small"),
            "{text}"
        );
        assert!(text.contains("zf module show"), "{text}");
    }
}
