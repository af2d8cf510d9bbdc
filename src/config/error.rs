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
///
/// The offending line is quoted only when it cannot hold a secret: a line
/// of `[auth]`, or of a key whose name says secret, key, password, user,
/// token or credential (API and admin keys, TURN secrets, passwords, MD5
/// keys), is named by its key path alone, and every quoted value in the
/// parser's message is masked (serde quotes the value it refused:
/// `invalid type: string "…"`). When the position cannot be told, the
/// message is masked too.
pub(super) fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return format!(
            "{}. Fix: see conf/turnpike.toml for the accepted keys",
            mask_quoted(&msg)
        );
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
    let path = key_path_at(text, start);
    let secret = path
        .as_deref()
        .is_none_or(|p| may_hold_secret(p) || !p.split('.').all(key_like))
        || may_hold_secret(snippet);
    if secret {
        let shown = path
            .as_deref()
            .map(known_prefix)
            .filter(|p| !p.is_empty())
            .map_or(String::new(), |p| format!("in `{p}`; "));
        return format!(
            "line {line}, column {col} ({shown}the line is not shown: it may hold a secret): {}. Fix: see conf/turnpike.toml for the accepted keys and values",
            mask_quoted(&msg)
        );
    }
    format!(
        "line {line}, column {col} (`{snippet}`): {msg}. Fix: see conf/turnpike.toml for the accepted keys and values"
    )
}

/// Every key name of the configuration: what a masked message may still
/// show. (A test checks that it covers every key `config check` prints.)
pub(super) const KEY_NAMES: &[&str] = &[
    "server",
    "realm",
    "software",
    "threads",
    "udp_gso",
    "public_host",
    "listen",
    "transport",
    "addr",
    "cert",
    "key",
    "relay",
    "bind_ip",
    "bind_ip6",
    "public_ip",
    "public_ip6",
    "ports",
    "auth",
    "secrets",
    "secret_files",
    "users",
    "nonce_lifetime",
    "policy",
    "allow_peers",
    "deny_peers",
    "nat64_prefixes",
    "max_allocations",
    "max_allocations_per_user",
    "max_lifetime",
    "max_permissions",
    "max_channels",
    "max_bitrate",
    "strict_channel_numbers",
    "http",
    "api_keys",
    "admin_keys",
    "credential_ttl",
    "cors_origins",
    "drain_deadline",
    "alternate_servers",
    "max_connections",
    "max_connections_per_ip",
    "header_timeout",
    "idle_timeout",
    // [limits]: TCP/TLS connections (max_connections,
    // max_connections_per_ip and idle_timeout are listed above, for [http])
    "first_request_timeout",
    "frame_timeout",
    "write_timeout",
    "fd_reserve",
    "limits",
    "unauth_rate",
    "unauth_burst",
    "rate_limit_slots",
    "log",
    "format",
    "redact_client_ips",
    // [fastpath] (issue 15: the XDP fast path)
    "fastpath",
    "mode",
    "interfaces",
    // [cluster] (issue 14: the fleet on Redis)
    "cluster",
    "redis_url",
    "redis_password",
    "redis_ca",
    "node_id",
    "advertise",
    "allocate_budget",
    "refresh_interval",
    "lease_ttl",
    "key_prefix",
];

/// Whether a key path (or a line) may carry a secret value.
fn may_hold_secret(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    ["auth", "secret", "key", "pass", "user", "token", "cred"]
        .iter()
        .any(|w| s.contains(w))
}

/// Whether a word is a key name of the configuration, or a typo of one
/// (one edit away for short words, two for longer ones: `port`, `realmm`). Anything else where a key
/// belongs (a user name, a value pasted on a line of its own) may be a
/// secret.
fn key_like(word: &str) -> bool {
    let typo = match word.chars().count() {
        0..=3 => 0,
        4..=5 => 1,
        _ => 2,
    };
    KEY_NAMES.contains(&word) || KEY_NAMES.iter().any(|k| edit_distance(word, k) <= typo)
}

/// Levenshtein distance (both are short key names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The leading segments of a dotted key path that are key names (or typos
/// of them): a user name under `auth.users`, or anything pasted where a key
/// belongs, is cut off.
fn known_prefix(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('.') {
        // What follows `users` is a user name: data, not a key.
        if !key_like(seg) || out.last() == Some(&"users") {
            break;
        }
        out.push(seg);
    }
    out.join(".")
}

/// Mask what a message quotes (`"value"` and `` `value` ``), except key
/// names and single characters or punctuation (the parser's "expected `=`").
fn mask_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(open) = rest.find(['"', '`']) {
        let q = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(q) else {
            // An unmatched quote: mask the rest.
            out.push('…');
            return out;
        };
        let inner = &after[..close];
        let keep = key_like(inner)
            || inner.chars().count() <= 1
            || inner.chars().all(|c| c.is_ascii_punctuation() || c == ' ');
        out.push_str(if keep { inner } else { "…" });
        out.push(q);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The dotted key path of the statement around byte `pos` of a TOML text:
/// the table header in force and the key of the statement (`auth.secrets`
/// for a line inside a multi-line `secrets = [...]` of `[auth]`). Strings
/// and comments are skipped, so a `=` or a `[` inside a value does not
/// start a statement or a table. `None` when the text up to `pos` is too
/// broken to tell.
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    let b = text.as_bytes();
    let end = pos.min(b.len());
    let mut table = String::new();
    let mut key = String::new();
    let mut depth = 0usize;
    let mut line_start = true;
    let mut i = 0;
    while i < end {
        let c = b[i];
        match c {
            b'\n' => {
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                i = skip_string(b, i)?;
                line_start = false;
                continue;
            }
            b'[' if line_start && depth == 0 => {
                let close = text[i..].find('\n').map_or(b.len(), |n| i + n);
                let header = text[i..close].split('#').next().unwrap_or("");
                table = unquote_path(header.trim().trim_start_matches('[').trim_end_matches(']'));
                key.clear();
                i = close;
                continue;
            }
            _ if line_start && depth == 0 => {
                // A statement: its key runs to the first `=` outside quotes.
                let mut k = String::new();
                while i < b.len() && b[i] != b'=' && b[i] != b'\n' {
                    if b[i] == b'"' || b[i] == b'\'' {
                        let j = skip_string(b, i)?;
                        k.push_str(&text[i..j]);
                        i = j;
                    } else {
                        k.push(b[i] as char);
                        i += 1;
                    }
                }
                key = unquote_path(&k);
                if i < b.len() && b[i] == b'=' {
                    i += 1;
                }
                line_start = false;
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        line_start = false;
        i += 1;
    }
    Some(match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    })
}

/// `a . "b"` → `a.b`.
fn unquote_path(p: &str) -> String {
    p.split('.')
        .map(|s| s.trim().trim_matches(['"', '\'']))
        .collect::<Vec<_>>()
        .join(".")
}

/// The index just past the string that starts at `i` (basic or literal,
/// single- or multi-line); `None` if it never ends.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let triple = b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q;
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        if q == b'"' && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if !triple && b[j] == b'\n' {
            return None;
        }
        if b[j] == q {
            if !triple {
                return Some(j + 1);
            }
            if b.len() >= j + 3 && b[j + 1] == q && b[j + 2] == q {
                // Up to two more quotes may close a multi-line string.
                let mut k = j + 3;
                while k < b.len() && b[k] == q && k < j + 5 {
                    k += 1;
                }
                return Some(k);
            }
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    const L: &str = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n";

    /// Bad lines holding a secret, each in another shape: the secret must
    /// not appear in the error, and the line must still be named.
    #[test]
    fn a_secret_in_a_bad_line_is_never_quoted() {
        let cases = [
            "[auth]\nsecrets = \"S3CRET-a\"\n",
            "[auth]\nsecrets = [\"S3CRET-a\", 5]\n",
            "[auth]\nsecrets = [\"S3CRET-a\"\n",
            "[auth]\nsecrets = [\n  \"ok-one\",\n  \"S3CRET-a\" \"x\",\n]\n",
            "[auth]\nsecret = [\"S3CRET-a\"]\n",
            "[auth]\nsecrets = [\"a\"]\nsecrets = [\"S3CRET-a\"]\n",
            "[auth]\nusers = { alice = \"S3CRET-a\" extra }\n",
            "[auth.users]\nalice = \"S3CRET-a\" x\n",
            "[auth.users]\nalice = { key = \"S3CRET-a\" foo }\n",
            "[auth]\n\"S3CRET-a\"\n",
            "S3CRET-a\n",
            "[server]\nrealm = \"r\"\nS3CRET-a\n",
            "auth.secrets = \"S3CRET-a\"\n",
            "auth = { secrets = \"S3CRET-a\" }\n",
            "[http]\napi_keys = \"S3CRET-a\"\n",
            "[http]\nadmin_keys = [\"S3CRET-a\", 1]\n",
            "[http]\napi_key = [\"S3CRET-a\"]\n",
            "[http]\naddr = \"127.0.0.1:0\", api_keys = [\"S3CRET-a\"]\n",
            "[auth]\nnonce_lifetime = \"1h\"\nsecrets = [\"S3CRET-a\"] oops # \"\n",
            "[auth]\nsecrets = ['S3CRET-a', \"\"\"S3CRET-a\"\"\", 7]\n",
        ];
        for c in cases {
            let e = err(&format!("{L}{c}"));
            assert!(!e.contains("S3CRET"), "{c:?} -> {e}");
            assert!(e.contains("t.toml: line "), "{c:?} -> {e}");
            assert!(e.contains("Fix:"), "{c:?} -> {e}");
        }
    }

    #[test]
    fn the_masked_line_is_named_by_its_key() {
        let e = err(&format!(
            "{L}[auth]\nsecrets = [\n  \"S3CRET-a\" \"x\",\n]\n"
        ));
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("in `auth.secrets`"), "{e}");
        assert!(e.contains("not shown"), "{e}");
        // A user name is not a key name: the path stops before it.
        let e = err(&format!("{L}[auth.users]\nS3CRET-a = 5\n"));
        assert!(!e.contains("S3CRET"), "{e}");
        assert!(e.contains("in `auth.users`"), "{e}");
    }

    #[test]
    fn lines_without_secrets_are_still_quoted() {
        let e = err("[[listen]]\ntransport = \"udp\"\naddr = \"1.2.3:99\"\n");
        assert!(e.contains("(`addr = \"1.2.3:99\"`)"), "{e}");
        let e = err(&format!("{L}[server]\nrealmm = \"x\"\n"));
        assert!(e.contains("`realmm = \"x\"`"), "{e}");
        assert!(e.contains("unknown field `realmm`"), "{e}");
    }

    #[test]
    fn key_paths_follow_tables_strings_and_arrays() {
        let t = "[a]\nx = [\"[b]\", \"y = 1\",\n \"z\"]\n[[c]]\nd.e = 1\n";
        let at = |needle: &str| key_path_at(t, t.find(needle).unwrap());
        assert_eq!(at("\"z\"").as_deref(), Some("a.x"));
        assert_eq!(at("1\n").as_deref(), Some("c.d.e"));
        assert_eq!(key_path_at("x = \"unterminated\ny = 1", 18), None);
    }

    #[test]
    fn masking_keeps_key_names_and_punctuation() {
        assert_eq!(
            mask_quoted("invalid type: string \"hunter2\", expected a sequence"),
            "invalid type: string \"…\", expected a sequence"
        );
        assert_eq!(
            mask_quoted("unknown field `hunter2hunter2`, expected one of `secrets`, `users`"),
            "unknown field `…`, expected one of `secrets`, `users`"
        );
        // A typo of a key name stays readable.
        assert_eq!(
            mask_quoted("unknown field `secret`"),
            "unknown field `secret`"
        );
        assert_eq!(mask_quoted("expected `.`, `=`"), "expected `.`, `=`");
        assert_eq!(mask_quoted("dangling \"abc"), "dangling \"…");
    }

    /// Every key `config check` can print is a known key name (so that a
    /// masked message still shows it).
    #[test]
    fn key_names_cover_every_key() {
        let mut c = Config::embedded();
        c.server.public_host = Some("h".into());
        c.relay.public_ip = Some([1, 2, 3, 4].into());
        c.relay.public_ip6 = Some(std::net::IpAddr::from([1u16; 8]));
        c.auth.secret_files = vec!["/f".into()];
        c.http.cert = Some("/c".into());
        c.http.key = Some("/k".into());
        c.listen[0].cert = Some("/c".into());
        c.listen[0].key = Some("/k".into());
        let v: toml::Value = toml::from_str(&c.to_toml()).unwrap();
        fn walk(v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        out.push(k.clone());
                        walk(v, out);
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut keys = Vec::new();
        walk(&v, &mut keys);
        for k in keys {
            assert!(KEY_NAMES.contains(&k.as_str()), "add `{k}` to KEY_NAMES");
        }
    }
}
