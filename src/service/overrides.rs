//! Every setting of fugo.toml, and environment variables that override
//! some of them (D252).
//!
//! A variable is named `FUGO_` and the setting's path in capitals, a
//! section and its key joined by two underscores: `FUGO_LISTEN`,
//! `FUGO_LIMITS__MAX_CONNECTIONS`, `FUGO_LOG__FORMAT`. Its value is the
//! setting's value as it would be written in TOML without quotes
//! (`FUGO_METRICS__LISTEN=127.0.0.1:9464`, `FUGO_AUDIT__RETENTION_DAYS=30`).
//!
//! Settings that decide **who is trusted and with which key** (the master
//! key and its fingerprint, custody, the TLS files and CRLs, the policy,
//! dev mode, the data directory that holds the audit trail, the log's
//! origin) are only ever read from the file: a variable naming one stops
//! the server. The environment of a process is easier to change unseen
//! than a reviewed, owner-only file, and `FUGO_DEV_MODE=true` must never
//! turn a production server into a demo.
//!
//! A variable with a section (`__`) that names no setting is an error
//! (a typo must not be ignored). A single-word `FUGO_` variable that names
//! no top-level setting is left alone: the client's `FUGO_SERVER`,
//! `FUGO_CA`, … and the benchmarks' knobs share the prefix.

use toml::{Table, Value};

/// How a setting's value is written, and whether the environment may set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A string (an address, a name).
    Text,
    /// A whole number.
    Whole,
    /// Read from the file only: why.
    FileOnly(&'static str),
}

/// One setting: its section (`None`: the top level), key and kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub(crate) section: Option<&'static str>,
    pub(crate) key: &'static str,
    pub(crate) kind: Kind,
}

const TRUST: &str = "it decides who is trusted or with which key";
const TRAIL: &str = "it decides where the audit trail is kept and what it is called";

const fn top(key: &'static str, kind: Kind) -> Setting {
    Setting {
        section: None,
        key,
        kind,
    }
}

const fn in_section(section: &'static str, key: &'static str, kind: Kind) -> Setting {
    Setting {
        section: Some(section),
        key,
        kind,
    }
}

/// Every setting fugo.toml knows. A test checks this list against the
/// fields the configuration accepts and against fugo.example.toml, so a
/// new setting cannot be added without documenting it there.
pub(crate) const SETTINGS: &[Setting] = &[
    top("listen", Kind::Text),
    top("data_dir", Kind::FileOnly(TRAIL)),
    top("policy", Kind::FileOnly(TRUST)),
    top("master_key", Kind::FileOnly(TRUST)),
    top("master_key_fingerprint", Kind::FileOnly(TRUST)),
    top("shutdown_grace_seconds", Kind::Whole),
    top("dev_mode", Kind::FileOnly(TRUST)),
    in_section("custody", "threshold", Kind::FileOnly(TRUST)),
    in_section("tls", "ca", Kind::FileOnly(TRUST)),
    in_section("tls", "cert", Kind::FileOnly(TRUST)),
    in_section("tls", "key", Kind::FileOnly(TRUST)),
    in_section("tls", "crl", Kind::FileOnly(TRUST)),
    in_section("limits", "handshake_timeout_seconds", Kind::Whole),
    in_section("limits", "idle_timeout_seconds", Kind::Whole),
    in_section("limits", "max_connections", Kind::Whole),
    in_section("limits", "max_concurrent_streams", Kind::Whole),
    in_section("limits", "max_message_bytes", Kind::Whole),
    in_section("limits", "stream_window_bytes", Kind::Whole),
    in_section("limits", "connection_window_bytes", Kind::Whole),
    in_section("limits", "max_header_bytes", Kind::Whole),
    in_section("limits", "keepalive_interval_seconds", Kind::Whole),
    in_section("limits", "keepalive_timeout_seconds", Kind::Whole),
    in_section("audit", "retention_days", Kind::Whole),
    in_section("audit", "reserve_megabytes", Kind::Whole),
    in_section("audit", "warn_megabytes", Kind::Whole),
    in_section("audit", "commit_timeout_ms", Kind::Whole),
    in_section("audit", "origin", Kind::FileOnly(TRAIL)),
    in_section("metrics", "listen", Kind::Text),
    in_section("keyring", "generation", Kind::FileOnly(TRUST)),
    in_section("keyring", "key_file", Kind::FileOnly(TRUST)),
    in_section("keyring", "fingerprint", Kind::FileOnly(TRUST)),
    in_section("keyring.custody", "threshold", Kind::FileOnly(TRUST)),
    in_section("admin", "listen", Kind::FileOnly(TRUST)),
    in_section("admin", "ca", Kind::FileOnly(TRUST)),
    in_section("admin", "identities", Kind::FileOnly(TRUST)),
    in_section("admin", "crl", Kind::FileOnly(TRUST)),
    in_section("log", "format", Kind::Text),
    in_section("log", "level", Kind::Text),
];

/// Sections that are arrays of tables (`[[keyring]]`, one per later
/// master-key generation); their settings are file-only.
#[cfg(test)]
pub(crate) const TABLE_ARRAYS: &[&str] = &["keyring"];

/// The prefix of every override.
pub(crate) const PREFIX: &str = "FUGO_";

impl Setting {
    /// The variable that overrides it: `FUGO_LIMITS__MAX_CONNECTIONS`.
    pub(crate) fn variable(&self) -> String {
        match self.section {
            None => format!("{PREFIX}{}", self.key.to_ascii_uppercase()),
            Some(section) => format!(
                "{PREFIX}{}__{}",
                section.to_ascii_uppercase(),
                self.key.to_ascii_uppercase()
            ),
        }
    }

    /// Its name as an operator reads it: `[limits] max_connections`.
    pub(crate) fn shown(&self) -> String {
        match self.section {
            None => self.key.to_owned(),
            Some(section) => format!("[{section}] {}", self.key),
        }
    }
}

/// Applies the `FUGO_` variables among `vars` to `table` (the parsed
/// file). Returns the names of the variables applied, in order; an error
/// names the variable and what is wrong (never echoing its value: a value
/// could be a secret pasted into the wrong variable).
pub(crate) fn apply(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (name, value) in vars {
        let Some(setting) = SETTINGS.iter().find(|setting| setting.variable() == name) else {
            if name.contains("__") {
                return Err(format!(
                    "environment variable {name} names no setting of fugo.toml \
                     (overrides are FUGO_<SECTION>__<KEY>, e.g. FUGO_LIMITS__MAX_CONNECTIONS)"
                ));
            }
            continue;
        };
        let value = match setting.kind {
            Kind::FileOnly(why) => {
                return Err(format!(
                    "environment variable {name}: {} may not be set from the environment \
                     ({why}); set it in fugo.toml",
                    setting.shown()
                ));
            }
            Kind::Text => Value::String(value),
            Kind::Whole => value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|number| *number >= 0)
                .map(Value::Integer)
                .ok_or_else(|| {
                    format!(
                        "environment variable {name}: {} must be a whole number",
                        setting.shown()
                    )
                })?,
        };
        let target = match setting.section {
            None => &mut *table,
            Some(section) => match table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()))
            {
                Value::Table(inner) => inner,
                _ => {
                    return Err(format!(
                        "environment variable {name}: {section} in fugo.toml is not a section"
                    ));
                }
            },
        };
        target.insert(setting.key.to_owned(), value);
        applied.push(name);
    }
    Ok(applied)
}

/// The process's `FUGO_` variables; one whose name or value is not UTF-8
/// is an error (it cannot be meant as anything else).
pub(crate) fn from_process() -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.starts_with(PREFIX) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| format!("environment variable {name} is not UTF-8"))?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn variables_are_named_after_section_and_key() {
        let names: Vec<String> = SETTINGS.iter().map(Setting::variable).collect();
        assert!(names.contains(&"FUGO_LISTEN".to_owned()));
        assert!(names.contains(&"FUGO_LIMITS__MAX_CONNECTIONS".to_owned()));
        assert!(names.contains(&"FUGO_LOG__FORMAT".to_owned()));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            names.len(),
            "no two settings share a variable"
        );
    }

    #[test]
    fn overrides_replace_and_add_values_with_their_types() {
        let mut table: Table =
            toml::from_str("listen = \"a\"\n[limits]\nmax_connections = 5\n").unwrap();
        let applied = apply(
            &mut table,
            vars(&[
                ("FUGO_LIMITS__MAX_CONNECTIONS", "64"),
                ("FUGO_LISTEN", "127.0.0.1:7000"),
                ("FUGO_METRICS__LISTEN", "127.0.0.1:9000"),
                ("FUGO_SERVER", "https://elsewhere"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(
            applied,
            [
                "FUGO_LIMITS__MAX_CONNECTIONS",
                "FUGO_LISTEN",
                "FUGO_METRICS__LISTEN"
            ]
        );
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:7000"));
        assert_eq!(table["limits"]["max_connections"].as_integer(), Some(64));
        assert_eq!(table["metrics"]["listen"].as_str(), Some("127.0.0.1:9000"));
    }

    #[test]
    fn trust_settings_typos_and_bad_numbers_are_refused_without_their_value() {
        for (name, expected) in [
            (
                "FUGO_DEV_MODE",
                "dev_mode may not be set from the environment",
            ),
            ("FUGO_MASTER_KEY", "master_key may not be set"),
            ("FUGO_TLS__CA", "[tls] ca may not be set"),
            ("FUGO_DATA_DIR", "data_dir may not be set"),
            (
                "FUGO_LIMITS__MAX_CONECTIONS",
                "names no setting of fugo.toml",
            ),
            ("FUGO_LIMITS__MAX_CONNECTIONS", "must be a whole number"),
        ] {
            let mut table = Table::new();
            let error = apply(&mut table, vars(&[(name, "s3cr3t-value")])).unwrap_err();
            assert!(error.contains(name) && error.contains(expected), "{error}");
            assert!(!error.contains("s3cr3t"), "{error}");
        }
        let mut table = Table::new();
        let error = apply(&mut table, vars(&[("FUGO_AUDIT__RETENTION_DAYS", "-1")])).unwrap_err();
        assert!(error.contains("whole number"), "{error}");
    }
}
