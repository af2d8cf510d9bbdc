//! Configuration errors: what went wrong, where, and the fix.

/// A configuration that cannot be used. Display names the file, the key and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}. Fix: check the path and its permissions")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {problem}. Fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    pub(super) fn invalid(
        file: &str,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            file: file.to_string(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The configuration key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// toml's errors carry a span; turn it into "line N, column M" and keep the
/// message (which names the key: "unknown field `x`, expected one of ...").
pub(super) fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return format!("{msg}. Fix: see conf/turnpike.toml for the accepted keys");
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
    format!(
        "line {line}, column {col} (`{snippet}`): {msg}. Fix: see conf/turnpike.toml for the accepted keys and values"
    )
}
