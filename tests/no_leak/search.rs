//! The leak search of tests/no_leak.rs: every secret a test run handled, in
//! every form it could leak in, and for each place searched, which kinds of
//! secret may legitimately be there.
//!
//! Text forms are matched ignoring ASCII case (hex may be printed either
//! way); binary forms byte for byte. One Aho-Corasick pass per place finds
//! every form of every secret at once, so a store file of megabytes is
//! searched for thousands of values in well under a second.
#![allow(unreachable_pub)] // a module of one test binary

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// What a secret is, which decides where it may appear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A My Number (valid or not: a malformed one is still someone's).
    Number,
    /// A person handle h = AES(K_person, n ‖ "fugo-pn1"): nowhere, ever.
    Handle,
    /// A person link AES(K_link, h): in the audit store (and its backup)
    /// only.
    Link,
    /// An agency's code: only in what is addressed to that agency.
    Code(String),
    /// Key material (the master key, the log's signing seed): nowhere.
    Key,
}

/// One secret and its forms.
#[derive(Debug)]
pub struct Secret {
    pub kind: Kind,
    /// Names it in a failure report.
    pub label: String,
    /// Text forms, matched ignoring ASCII case.
    pub text: Vec<String>,
    /// Binary forms, matched exactly.
    pub bytes: Vec<Vec<u8>>,
}

/// What may appear in one place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Allowed {
    /// My Numbers (only the output of a reidentify, to the agency that may).
    pub numbers: bool,
    /// Person links (only the audit store and copies of it).
    pub links: bool,
    /// This agency's codes (its own outputs and responses).
    pub codes_of: Option<String>,
    /// The codes of an agency merged into the caller: the caller sent them
    /// and gets each back beside its own code (migrate's `old_code`).
    pub merged_codes_of: Option<String>,
}

impl Allowed {
    /// Nothing secret at all: logs, errors, reject files, exports.
    pub fn nothing() -> Self {
        Allowed::default()
    }

    /// The codes of `agency` (what is addressed to it).
    pub fn codes_of(agency: &str) -> Self {
        Allowed {
            codes_of: Some(agency.to_owned()),
            ..Allowed::default()
        }
    }

    /// The audit store: person links, nothing else.
    pub fn store() -> Self {
        Allowed {
            links: true,
            ..Allowed::default()
        }
    }

    fn allows(&self, kind: &Kind) -> bool {
        match kind {
            Kind::Number => self.numbers,
            Kind::Link => self.links,
            Kind::Code(agency) => {
                self.codes_of.as_deref() == Some(agency)
                    || self.merged_codes_of.as_deref() == Some(agency)
            }
            Kind::Handle | Kind::Key => false,
        }
    }
}

/// One place searched: a log, an output file, a store, a response.
#[derive(Debug)]
pub struct Place {
    pub name: String,
    pub bytes: Vec<u8>,
    pub allowed: Allowed,
}

impl Place {
    pub fn new(name: impl Into<String>, bytes: impl Into<Vec<u8>>, allowed: Allowed) -> Self {
        Place {
            name: name.into(),
            bytes: bytes.into(),
            allowed,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text forms of 16 or 32 secret bytes: hex, base64 (standard, unpadded,
/// URL-safe), and `Debug` of the array (`[1, 2, …]`, what a derived
/// `Debug` prints).
fn byte_text_forms(bytes: &[u8]) -> Vec<String> {
    vec![
        hex(bytes),
        format!("{bytes:?}"),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ]
}

/// Every secret of a test run.
#[derive(Debug, Default)]
pub struct Secrets(pub Vec<Secret>);

impl Secrets {
    /// A number, given as any text holding its 12 digits: the 12 digits;
    /// spaced as on the card and dashed; in full-width digits; the first
    /// eleven (the number without its check digit); hex of the ASCII
    /// digits; the 64-bit integer in hex (short, 16 digits, and its
    /// little-endian bytes, and `Debug` of its bytes); and in binary its 8 bytes both ways, its 12
    /// ASCII digits, and the 16-byte person block n ‖ "fugo-pn1" that
    /// K_person encrypts.
    pub fn number(&mut self, number: &str) {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(digits.len(), 12, "a test number has 12 digits");
        let mut text = vec![
            digits.clone(),
            format!("{} {} {}", &digits[..4], &digits[4..8], &digits[8..]),
            format!("{}-{}-{}", &digits[..4], &digits[4..8], &digits[8..]),
            digits
                .chars()
                .map(|c| char::from_u32(0xff10 + c.to_digit(10).unwrap()).unwrap())
                .collect(),
            digits[..11].to_owned(),
            hex(digits.as_bytes()),
        ];
        let value: u64 = digits.parse().unwrap();
        text.push(format!("{value:x}"));
        text.push(format!("{value:016x}"));
        text.push(hex(&value.to_le_bytes()));
        text.push(format!("{:?}", value.to_be_bytes()));
        text.push(format!("{:?}", value.to_le_bytes()));
        text.retain(|form| form.len() >= 8);
        self.0.push(Secret {
            kind: Kind::Number,
            label: format!("number {digits}"),
            text,
            bytes: vec![
                value.to_be_bytes().to_vec(),
                value.to_le_bytes().to_vec(),
                fugo::code::person_block(value).to_vec(),
            ],
        });
    }

    /// A person handle.
    pub fn handle(&mut self, label: &str, handle: [u8; 16]) {
        self.bytes(Kind::Handle, format!("handle of {label}"), &handle);
    }

    /// A person link.
    pub fn link(&mut self, label: &str, link: [u8; 16]) {
        self.bytes(Kind::Link, format!("link of {label}"), &link);
    }

    /// Key material.
    pub fn key(&mut self, label: &str, key: &[u8]) {
        self.bytes(Kind::Key, label.to_owned(), key);
    }

    /// An agency's code, as text; its 16 code bytes too.
    pub fn code(&mut self, agency: &str, text: &str) {
        let code = fugo::code::AgencyCode::parse(text.as_bytes()).expect("a code");
        let mut forms = byte_text_forms(code.bytes());
        forms.push(text.to_owned());
        forms.push(text.to_ascii_lowercase().replace('-', ""));
        self.0.push(Secret {
            kind: Kind::Code(agency.to_owned()),
            label: format!("{agency} code {text}"),
            text: forms,
            bytes: vec![code.bytes().to_vec()],
        });
    }

    fn bytes(&mut self, kind: Kind, label: String, bytes: &[u8]) {
        self.0.push(Secret {
            kind,
            label,
            text: byte_text_forms(bytes),
            bytes: vec![bytes.to_vec()],
        });
    }

    /// Every secret found in a place where it may not be: `place: label
    /// (form)`, at most a few per place.
    pub fn leaks(&self, places: &[Place]) -> Vec<String> {
        let mut found = Vec::new();
        let mut kinds: Vec<&Allowed> = Vec::new();
        for place in places {
            if !kinds.contains(&&place.allowed) {
                kinds.push(&place.allowed);
            }
        }
        for allowed in kinds {
            let searched: Vec<&Secret> = self
                .0
                .iter()
                .filter(|secret| !allowed.allows(&secret.kind))
                .collect();
            let (text, text_owner) = automaton(&searched, true);
            let (binary, binary_owner) = automaton(&searched, false);
            for place in places.iter().filter(|p| &p.allowed == allowed) {
                for (machine, owner) in [(&text, &text_owner), (&binary, &binary_owner)] {
                    let Some(machine) = machine else { continue };
                    for hit in machine.find_iter(&place.bytes).take(5) {
                        let (secret, form) = &owner[hit.pattern().as_usize()];
                        found.push(format!(
                            "{}: {} (form {form:?} at byte {})",
                            place.name,
                            searched[*secret].label,
                            hit.start()
                        ));
                    }
                }
            }
        }
        found
    }
}

/// One automaton over the text (or binary) forms of `secrets`, and for
/// each pattern the secret and the form it stands for.
fn automaton(secrets: &[&Secret], text: bool) -> (Option<AhoCorasick>, Vec<(usize, String)>) {
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut owner = Vec::new();
    for (index, secret) in secrets.iter().enumerate() {
        if text {
            for form in &secret.text {
                patterns.push(form.as_bytes().to_vec());
                owner.push((index, form.clone()));
            }
        } else {
            for form in &secret.bytes {
                patterns.push(form.clone());
                owner.push((index, hex(form)));
            }
        }
    }
    if patterns.is_empty() {
        return (None, owner);
    }
    let machine = AhoCorasickBuilder::new()
        .ascii_case_insensitive(text)
        .match_kind(MatchKind::Standard)
        .build(&patterns)
        .expect("the patterns build an automaton");
    (Some(machine), owner)
}
