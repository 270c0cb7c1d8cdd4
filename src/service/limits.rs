//! The `[limits]` section of fugo.toml: what one client may hold of the
//! server before it has proved who it is, and after.
//!
//! Every limit has a safe default, so a configuration without the section
//! is protected. The worst case one connection can pin in memory is about
//! `max_concurrent_streams × max_message_bytes` for a caller the policy
//! knows, and `connection_window_bytes` for one it does not (its calls are
//! refused before their bodies are read); see docs/DECISIONS.md, D46–D48.

use std::time::Duration;

use serde::Deserialize;

/// The largest HTTP/2 flow-control window (RFC 9113, 6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The `[limits]` section as written; every field optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Seconds a client gets to finish the TLS handshake.
    pub handshake_timeout_seconds: u64,
    /// Seconds without a byte from the client before its connection closes.
    pub idle_timeout_seconds: u64,
    /// Connections open at once (handshaking ones included); more are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 flow-control window of one stream, in bytes.
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window of one connection, in bytes.
    pub connection_window_bytes: u32,
    /// Largest HTTP/2 header block, in bytes.
    pub max_header_bytes: u32,
    /// Seconds between HTTP/2 pings to a quiet client (0: none, the
    /// default). A client's answer to a ping is activity, so pings must not
    /// come more often than the idle timeout, or no connection would ever
    /// be idle; dead clients are found by the idle timeout.
    pub keepalive_interval_seconds: u64,
    /// Seconds a client gets to answer a ping before it is dropped.
    pub keepalive_timeout_seconds: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            handshake_timeout_seconds: 10,
            idle_timeout_seconds: 300,
            max_connections: 1024,
            max_concurrent_streams: 32,
            max_message_bytes: 4 << 20,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 2 << 20,
            max_header_bytes: 16 << 10,
            keepalive_interval_seconds: 0,
            keepalive_timeout_seconds: 20,
        }
    }
}

/// Checked limits, as the server uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// See [`RawLimits::handshake_timeout_seconds`].
    pub handshake_timeout: Duration,
    /// See [`RawLimits::idle_timeout_seconds`].
    pub idle_timeout: Duration,
    /// See [`RawLimits::max_connections`].
    pub max_connections: usize,
    /// See [`RawLimits::max_concurrent_streams`].
    pub max_concurrent_streams: u32,
    /// See [`RawLimits::max_message_bytes`].
    pub max_message_bytes: usize,
    /// See [`RawLimits::stream_window_bytes`].
    pub stream_window_bytes: u32,
    /// See [`RawLimits::connection_window_bytes`].
    pub connection_window_bytes: u32,
    /// See [`RawLimits::max_header_bytes`].
    pub max_header_bytes: u32,
    /// See [`RawLimits::keepalive_interval_seconds`]; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// See [`RawLimits::keepalive_timeout_seconds`].
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // The defaults pass `check` (pinned by a unit test).
        Limits::from_raw(RawLimits::default())
    }
}

impl Limits {
    /// Checks the section; the error names the field and what to write.
    pub fn check(raw: RawLimits) -> Result<Self, String> {
        let positive = |field: &str, value: u64| {
            if value == 0 {
                Err(format!("limits.{field} must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("handshake_timeout_seconds", raw.handshake_timeout_seconds)?;
        positive("idle_timeout_seconds", raw.idle_timeout_seconds)?;
        positive("max_connections", raw.max_connections as u64)?;
        positive("max_concurrent_streams", raw.max_concurrent_streams.into())?;
        positive("max_message_bytes", raw.max_message_bytes as u64)?;
        positive("max_header_bytes", raw.max_header_bytes.into())?;
        positive("keepalive_timeout_seconds", raw.keepalive_timeout_seconds)?;
        for (field, value) in [
            ("stream_window_bytes", raw.stream_window_bytes),
            ("connection_window_bytes", raw.connection_window_bytes),
        ] {
            if !(65_535..=MAX_WINDOW).contains(&value) {
                return Err(format!(
                    "limits.{field} must be between 65535 and {MAX_WINDOW} (HTTP/2 window bounds)"
                ));
            }
        }
        if raw.keepalive_interval_seconds != 0
            && raw.keepalive_interval_seconds < raw.idle_timeout_seconds
        {
            return Err(format!(
                "limits.keepalive_interval_seconds must be 0 or at least idle_timeout_seconds ({}): \
                 a client's answer to a ping counts as activity, so shorter pings keep idle \
                 connections open forever",
                raw.idle_timeout_seconds
            ));
        }
        Ok(Limits::from_raw(raw))
    }

    fn from_raw(raw: RawLimits) -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(raw.handshake_timeout_seconds),
            idle_timeout: Duration::from_secs(raw.idle_timeout_seconds),
            max_connections: raw.max_connections,
            max_concurrent_streams: raw.max_concurrent_streams,
            max_message_bytes: raw.max_message_bytes,
            stream_window_bytes: raw.stream_window_bytes,
            connection_window_bytes: raw.connection_window_bytes,
            max_header_bytes: raw.max_header_bytes,
            keepalive_interval: (raw.keepalive_interval_seconds > 0)
                .then(|| Duration::from_secs(raw.keepalive_interval_seconds)),
            keepalive_timeout: Duration::from_secs(raw.keepalive_timeout_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bounded() {
        let limits = Limits::check(RawLimits::default()).unwrap();
        assert_eq!(limits, Limits::default());
        assert_eq!(limits.max_connections, 1024);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_example_configuration_writes_the_defaults() {
        #[derive(Deserialize)]
        struct Example {
            limits: RawLimits,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fugo.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        // Only the [limits] table: the rest belongs to ServeConfig.
        let table: toml::Table = toml::from_str(&text).unwrap();
        let example: Example =
            toml::Table::from_iter([("limits".to_owned(), table["limits"].clone())])
                .try_into()
                .unwrap();
        assert_eq!(Limits::check(example.limits).unwrap(), Limits::default());
        let unknown = toml::from_str::<Example>("[limits]\nmax_conections = 5\n");
        assert!(unknown.is_err(), "a misspelt limit must be refused");
    }

    #[test]
    fn zero_and_out_of_range_values_name_their_field() {
        let zero = RawLimits {
            max_connections: 0,
            ..RawLimits::default()
        };
        assert_eq!(
            Limits::check(zero).unwrap_err(),
            "limits.max_connections must be at least 1"
        );
        let tiny = RawLimits {
            stream_window_bytes: 10,
            ..RawLimits::default()
        };
        assert!(
            Limits::check(tiny)
                .unwrap_err()
                .starts_with("limits.stream_window_bytes must be between")
        );
        let pings = RawLimits {
            keepalive_interval_seconds: 60,
            ..RawLimits::default()
        };
        assert!(
            Limits::check(pings)
                .unwrap_err()
                .starts_with("limits.keepalive_interval_seconds must be 0 or at least")
        );
    }
}
