//! The exchange layer of fugo-core on its own: the four operations under
//! a policy read from TOML, their typed outcomes, and sealing made
//! reproducible by an injected random source.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::atomic::{AtomicU64, Ordering};

use fugo::agency::{AffairId, AgencyId, Epoch, ItemId};
use fugo::code::Coder;
use fugo::exchange::{
    BatchError, Done, Exchange, ItemError, MAX_BATCH, RandomFailed, RandomSource, SealContext,
};
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber::MyNumber;
use fugo::policy::{Denied, Policy};
use fugo::token::TokenError;

/// A random source that counts up, eight bytes at a time: deterministic, so
/// a seal can be repeated exactly, and never repeats a serial.
#[derive(Default)]
struct Counter(AtomicU64);

impl RandomSource for Counter {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
        for chunk in out.chunks_mut(8) {
            let next = self.0.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            chunk.copy_from_slice(&next[..chunk.len()]);
        }
        Ok(())
    }
}

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "moj"
name = "MOJ"
certificates = ["moj"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax"]
token_lifetime_seconds = 3600

[[rule]]
requester = "mhlw"
affair = "health"
provider = "moj"
items = ["family-register"]
token_lifetime_seconds = 3600
"#;

const NOW: u64 = 1_790_000_000;

fn setup() -> (Exchange, Policy) {
    let keys = KeyHierarchy::new(&MasterKey::from_bytes([3; 32]));
    (
        Exchange::new(keys, Box::new(Counter::default())),
        fugo::policy::parse(POLICY).unwrap(),
    )
}

fn id(text: &str) -> AgencyId {
    AgencyId::new(text).unwrap()
}

fn context(provider: &str, item: &str) -> SealContext {
    SealContext {
        provider: id(provider),
        affair: AffairId::new("health").unwrap(),
        items: vec![ItemId::new(item).unwrap()],
        non_disclosure_until: None,
    }
}

fn numbers(count: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            let digits = fugo::mynumber::with_check_digit(i * 7_919_007 + 13);
            String::from_utf8_lossy(&digits).into_owned()
        })
        .collect()
}

fn ok<T: std::fmt::Debug>(results: Done<T>) -> Vec<T> {
    results.into_iter().map(Result::unwrap).collect()
}

fn bytes(items: &[String]) -> Vec<&[u8]> {
    items.iter().map(String::as_bytes).collect()
}

#[test]
fn derive_seal_redeem_gives_the_providers_own_codes() {
    let (exchange, policy) = setup();
    let numbers = numbers(2000);
    let mhlw = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers))
        .unwrap());
    let shinjuku = ok(exchange
        .derive(&policy, &id("city-shinjuku"), &bytes(&numbers))
        .unwrap());
    assert!(mhlw.iter().zip(&shinjuku).all(|(a, b)| a != b));
    let sealed = ok(exchange
        .seal(
            &policy,
            &id("mhlw"),
            &context("city-shinjuku", "local-tax"),
            &bytes(&mhlw),
            NOW,
        )
        .unwrap());
    let tokens: Vec<&[u8]> = sealed.iter().map(|s| s.token.as_bytes()).collect();
    let redeemed = ok(exchange
        .redeem(&policy, &id("city-shinjuku"), &tokens, NOW + 10)
        .unwrap());
    for ((r, expected), s) in redeemed.iter().zip(&shinjuku).zip(&sealed) {
        assert_eq!(
            String::from_utf8(r.code.to_text().to_vec()).unwrap(),
            *expected
        );
        assert_eq!(r.context.requester, id("mhlw"));
        assert_eq!(r.serial, s.serial);
        assert_eq!(r.context.expires_at, NOW + 3600);
    }
    let serials: std::collections::HashSet<_> = sealed.iter().map(|s| s.serial).collect();
    assert_eq!(serials.len(), sealed.len());
}

#[test]
fn tokens_fail_for_the_wrong_agency_late_or_without_a_rule() {
    let (exchange, policy) = setup();
    let number = numbers(1);
    let code = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&number))
        .unwrap());
    let sealed = ok(exchange
        .seal(
            &policy,
            &id("mhlw"),
            &context("moj", "family-register"),
            &bytes(&code),
            NOW,
        )
        .unwrap());
    let token = [sealed[0].token.as_bytes()];
    let error = |caller: &str, now: u64, policy: &Policy| {
        exchange.redeem(policy, &id(caller), &token, now).unwrap()[0]
            .as_ref()
            .unwrap_err()
            .error
            .clone()
    };
    assert_eq!(
        error("city-shinjuku", NOW, &policy),
        ItemError::Token(TokenError::WrongAddressee)
    );
    assert_eq!(error("moj", NOW + 3600, &policy), ItemError::Expired);
    // The rule mhlw → moj is the last one; without it the token is void.
    let withdrawn = fugo::policy::parse(&POLICY[..POLICY.rfind("[[rule]]").unwrap()]).unwrap();
    assert!(matches!(
        error("moj", NOW, &withdrawn),
        ItemError::Withdrawn(Denied::NoRule { .. })
    ));
    assert!(exchange.redeem(&policy, &id("moj"), &token, NOW).unwrap()[0].is_ok());
    let mut forged = sealed[0].token.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let result = exchange
        .redeem(&policy, &id("moj"), &[&forged], NOW)
        .unwrap();
    assert_eq!(
        result[0].as_ref().unwrap_err().error,
        ItemError::Token(TokenError::Forged)
    );
}

#[test]
fn seal_needs_a_rule_and_reidentify_a_capability() {
    let (exchange, policy) = setup();
    let number = numbers(1);
    let code = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&number))
        .unwrap());
    let denied = exchange
        .seal(
            &policy,
            &id("mhlw"),
            &context("city-shinjuku", "family-register"),
            &bytes(&code),
            NOW,
        )
        .unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("does not include data item family-register"),
        "{denied}"
    );
    let reverse = exchange
        .seal(
            &policy,
            &id("city-shinjuku"),
            &context("mhlw", "local-tax"),
            &bytes(&code),
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        reverse.to_string(),
        "no rule lets city-shinjuku ask mhlw under affair health"
    );
    assert!(matches!(
        exchange.reidentify(&policy, &id("mhlw"), &bytes(&code)),
        Err(BatchError::Denied(Denied::MissingCapability { .. }))
    ));
    assert!(matches!(
        exchange.derive(&policy, &id("moj"), &bytes(&number)),
        Err(BatchError::Denied(Denied::MissingCapability { .. }))
    ));
}

#[test]
fn reidentify_per_item_and_epochs() {
    let (exchange, policy) = setup();
    let number = numbers(3);
    let codes = ok(exchange
        .derive(&policy, &id("city-shinjuku"), &bytes(&number))
        .unwrap());
    let mhlw_code = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&number))
        .unwrap());
    let inputs: Vec<&[u8]> = vec![
        codes[0].as_bytes(),
        b"not a code",
        mhlw_code[1].as_bytes(),
        codes[2].as_bytes(),
    ];
    let results = exchange
        .reidentify(&policy, &id("city-shinjuku"), &inputs)
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().as_str(), number[0]);
    assert!(matches!(
        results[1].as_ref().unwrap_err().error,
        ItemError::CodeText(_)
    ));
    assert_eq!(results[1].as_ref().unwrap_err().index, 1);
    // The MHLW code has epoch 1, accepted by Shinjuku, but is not its code.
    assert_eq!(
        results[2].as_ref().unwrap_err().error,
        ItemError::UnknownCode
    );
    assert_eq!(results[3].as_ref().unwrap().as_str(), number[2]);
    let retired =
        fugo::policy::parse(&POLICY.replace("accepted_epochs = [1, 2]", "accepted_epochs = [2]"))
            .unwrap();
    let keys = KeyHierarchy::new(&MasterKey::from_bytes([3; 32]));
    let old = Coder::new(&keys, id("city-shinjuku"), Epoch::new(1).unwrap());
    let old_code = old.derive(&MyNumber::parse(number[0].as_bytes()).unwrap());
    let text = old_code.to_text();
    let results = exchange
        .reidentify(&retired, &id("city-shinjuku"), &[&text[..]])
        .unwrap();
    assert_eq!(
        results[0].as_ref().unwrap_err().error,
        ItemError::RetiredEpoch(Epoch::new(1).unwrap())
    );
    assert!(
        results
            .iter()
            .all(|r| !format!("{r:?}").contains(&number[0]))
    );
}

#[test]
fn a_non_disclosure_date_travels_only_where_the_rule_allows_it() {
    let (exchange, policy) = setup();
    let code = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers(1)))
        .unwrap());
    let mut hidden = context("moj", "family-register");
    hidden.non_disclosure_until = Some(NOW + 86_400);
    assert!(matches!(
        exchange.seal(&policy, &id("mhlw"), &hidden, &bytes(&code), NOW),
        Err(BatchError::Denied(Denied::NonDisclosureNotAllowed { .. }))
    ));
    let allowing = fugo::policy::parse(&format!("{POLICY}non_disclosure = true\n")).unwrap();
    let sealed = ok(exchange
        .seal(&allowing, &id("mhlw"), &hidden, &bytes(&code), NOW)
        .unwrap());
    let token = [sealed[0].token.as_bytes()];
    let redeemed = ok(exchange.redeem(&allowing, &id("moj"), &token, NOW).unwrap());
    assert_eq!(redeemed[0].context.non_disclosure_until, Some(NOW + 86_400));
    // Withdrawing the permission voids the token: the rule is checked again.
    let result = exchange.redeem(&policy, &id("moj"), &token, NOW).unwrap();
    assert!(matches!(
        result[0].as_ref().unwrap_err().error,
        ItemError::Withdrawn(Denied::NonDisclosureNotAllowed { .. })
    ));
}

#[test]
fn batches_are_bounded() {
    let (exchange, policy) = setup();
    let many = vec![&b"123456789018"[..]; MAX_BATCH + 1];
    assert_eq!(
        exchange.derive(&policy, &id("mhlw"), &many).unwrap_err(),
        BatchError::TooLarge(MAX_BATCH + 1)
    );
}

#[test]
fn sealing_is_reproducible_from_its_randomness() {
    let (first, policy) = setup();
    let (second, _) = setup();
    let codes = ok(first
        .derive(&policy, &id("mhlw"), &bytes(&numbers(3)))
        .unwrap());
    let seal = |exchange: &Exchange| {
        ok(exchange
            .seal(
                &policy,
                &id("mhlw"),
                &context("city-shinjuku", "local-tax"),
                &bytes(&codes),
                NOW,
            )
            .unwrap())
        .into_iter()
        .map(|sealed| sealed.token.as_bytes().to_vec())
        .collect::<Vec<_>>()
    };
    let tokens = seal(&first);
    // The same randomness gives the same tokens; the next draw gives others.
    assert_eq!(tokens, seal(&second));
    assert_ne!(tokens, seal(&first));
}

#[test]
fn seal_refuses_repeated_items_and_unbounded_secrecy() {
    let (exchange, policy) = setup();
    let allowing = fugo::policy::parse(&format!("{POLICY}non_disclosure = true\n")).unwrap();
    let code = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers(1)))
        .unwrap());
    let seal =
        |context: &SealContext| exchange.seal(&allowing, &id("mhlw"), context, &bytes(&code), NOW);
    let mut twice = context("moj", "family-register");
    twice.items.push(ItemId::new("family-register").unwrap());
    assert_eq!(
        seal(&twice).unwrap_err(),
        BatchError::DuplicateItem { position: 2 }
    );
    let mut none = context("moj", "family-register");
    none.items.clear();
    assert_eq!(seal(&none).unwrap_err(), BatchError::NoItems);
    let mut hidden = context("moj", "family-register");
    hidden.non_disclosure_until = Some(NOW);
    assert_eq!(seal(&hidden).unwrap_err(), BatchError::NonDisclosurePast);
    hidden.non_disclosure_until = Some(NOW + 366 * 86_400);
    assert_eq!(
        seal(&hidden).unwrap_err(),
        BatchError::NonDisclosureTooFar { max_days: 365 }
    );
    hidden.non_disclosure_until = Some(NOW + 365 * 86_400);
    assert!(seal(&hidden).is_ok());
}

/// The audit trail records one entry per person an item opened, so every
/// operation names the person's link per item: the same link for one
/// person whichever agency's code or token it came through, none for an
/// item that opened no one, and one for a refusal after opening (an
/// expired token). Links turn back into the reader's own code only.
#[test]
fn every_operation_names_the_person_it_opened_by_one_link() {
    let (exchange, policy) = setup();
    let number = numbers(1);
    let inputs: Vec<&[u8]> = vec![number[0].as_bytes(), b"123456789012"];
    let derived = exchange.derive(&policy, &id("mhlw"), &inputs).unwrap();
    let link = derived.people[0].expect("a derived number opens its person");
    assert_eq!(derived.people[1], None, "a bad number opens no one");
    let code = derived[0].as_ref().unwrap().clone();
    let other = ok(exchange
        .derive(&policy, &id("city-shinjuku"), &bytes(&number))
        .unwrap());
    let stranger = b"1AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let sealed = exchange
        .seal(
            &policy,
            &id("mhlw"),
            &context("moj", "family-register"),
            &[code.as_bytes(), &stranger[..]],
            NOW,
        )
        .unwrap();
    assert_eq!(sealed.people, vec![Some(link), None]);
    let token = [sealed[0].as_ref().unwrap().token.as_bytes()];
    let redeemed = exchange.redeem(&policy, &id("moj"), &token, NOW).unwrap();
    assert_eq!(redeemed.people, vec![Some(link)]);
    let late = exchange
        .redeem(&policy, &id("moj"), &token, NOW + 3_700)
        .unwrap();
    assert_eq!(late[0].as_ref().unwrap_err().error, ItemError::Expired);
    assert_eq!(
        late.people,
        vec![Some(link)],
        "an expired token opened its person"
    );
    let back = exchange
        .reidentify(&policy, &id("city-shinjuku"), &bytes(&other))
        .unwrap();
    assert_eq!(back.people, vec![Some(link)]);
    assert_eq!(
        exchange
            .link_of_own_code(&policy, &id("city-shinjuku"), other[0].as_bytes())
            .unwrap(),
        link
    );
    let shown = exchange
        .code_for_link(
            &policy,
            &id("city-shinjuku"),
            fugo::agency::Epoch::new(2).unwrap(),
            &link,
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(shown.to_text().to_vec()).unwrap(),
        other[0]
    );
    let forged = fugo::link::PersonLink::from_bytes([9; 16]);
    assert_eq!(
        exchange
            .code_for_link(
                &policy,
                &id("city-shinjuku"),
                fugo::agency::Epoch::new(2).unwrap(),
                &forged
            )
            .unwrap_err(),
        ItemError::UnknownCode
    );
}

/// A random source that counts up in the low-order bytes of each draw, from
/// `start`: deterministic, and every 4-byte draw (a key index) is new.
struct LowCounter(AtomicU64);

impl LowCounter {
    fn from(start: u64) -> Box<Self> {
        Box::new(LowCounter(AtomicU64::new(start)))
    }
}

impl RandomSource for LowCounter {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
        for chunk in out.chunks_mut(8) {
            let next = self.0.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            chunk.copy_from_slice(&next[8 - chunk.len()..]);
        }
        Ok(())
    }
}

fn demo_keys() -> KeyHierarchy {
    KeyHierarchy::new(&MasterKey::from_bytes([3; 32]))
}

/// How many tokens each key (window, index) sealed, in the order the keys
/// were first used.
fn tokens_per_key(tokens: &[Vec<u8>]) -> Vec<(fugo::token::KeyName, usize)> {
    let mut counts: Vec<(fugo::token::KeyName, usize)> = Vec::new();
    for token in tokens {
        let (name, _) = fugo::token::peek(token).unwrap();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
}

/// Seals `codes` in batches of the given sizes and returns the tokens.
fn seal_batches(
    exchange: &Exchange,
    policy: &Policy,
    codes: &[String],
    sizes: &[usize],
) -> Vec<Vec<u8>> {
    let mut tokens = Vec::new();
    let mut start = 0;
    for &size in sizes {
        let batch = bytes(&codes[start..start + size]);
        start += size;
        let sealed = ok(exchange
            .seal(
                policy,
                &id("mhlw"),
                &context("city-shinjuku", "local-tax"),
                &batch,
                NOW,
            )
            .unwrap());
        tokens.extend(sealed.into_iter().map(|s| s.token.as_bytes().to_vec()));
    }
    tokens
}

/// Redeems every token as city-shinjuku and checks each gives its own code
/// for the person of the same position in `numbers`.
fn assert_all_redeem(exchange: &Exchange, policy: &Policy, tokens: &[Vec<u8>], numbers: &[String]) {
    let own = ok(exchange
        .derive(policy, &id("city-shinjuku"), &bytes(numbers))
        .unwrap());
    let slices: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
    let redeemed = ok(exchange
        .redeem(policy, &id("city-shinjuku"), &slices, NOW + 10)
        .unwrap());
    assert_eq!(redeemed.len(), tokens.len());
    for (r, expected) in redeemed.iter().zip(own.iter().cycle()) {
        assert_eq!(
            String::from_utf8(r.code.to_text().to_vec()).unwrap(),
            *expected
        );
    }
}

/// AES-GCM's per-key bound, lowered to 100: 250 tokens take three keys of
/// 100, 100 and 50, whether sealed in one batch or in batches that straddle
/// the rotations, and every token redeems, here and after a restart.
#[test]
fn sealing_moves_to_a_fresh_key_at_the_bound() {
    let policy = fugo::policy::parse(POLICY).unwrap();
    let numbers = numbers(250);
    for sizes in [&[250][..], &[30, 120, 99, 1], &[100, 100, 50]] {
        let exchange = Exchange::new(demo_keys(), LowCounter::from(1)).with_seal_bound(100);
        assert_eq!(exchange.seal_bound(), 100);
        let codes = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&numbers))
            .unwrap());
        let tokens = seal_batches(&exchange, &policy, &codes, sizes);
        let per_key = tokens_per_key(&tokens);
        let counts: Vec<usize> = per_key.iter().map(|(_, count)| *count).collect();
        assert_eq!(counts, [100, 100, 50], "batches {sizes:?}");
        // Each key seals one run of tokens: no key is left and resumed.
        for (name, _) in &per_key {
            let positions: Vec<usize> = tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| fugo::token::peek(t).unwrap().0 == *name)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                positions.len(),
                positions.last().unwrap() - positions[0] + 1
            );
            assert_eq!(name.window(), fugo::token::Window::containing(NOW));
            assert_eq!(name.format(), fugo::token::TOKEN_FORMAT);
        }
        assert_all_redeem(&exchange, &policy, &tokens, &numbers);
        // A restart: the counts are gone, the keys are named in the tokens.
        let restarted = Exchange::new(demo_keys(), LowCounter::from(1 << 40)).with_seal_bound(100);
        assert_all_redeem(&restarted, &policy, &tokens, &numbers);
        let after = seal_batches(&restarted, &policy, &codes, &[10]);
        let fresh = tokens_per_key(&after)[0].0;
        assert!(per_key.iter().all(|(name, _)| *name != fresh), "{fresh:?}");
    }
}

/// The bound cannot be raised past 2^31, nor set to 0.
#[test]
fn the_seal_bound_is_only_lowered() {
    let raised = Exchange::new(demo_keys(), LowCounter::from(1)).with_seal_bound(u64::MAX);
    assert_eq!(raised.seal_bound(), fugo::token::MAX_SEALS_PER_KEY);
    assert_eq!(fugo::token::MAX_SEALS_PER_KEY, 1 << 31);
    let zero = Exchange::new(demo_keys(), LowCounter::from(1)).with_seal_bound(0);
    assert_eq!(zero.seal_bound(), 1);
    assert_eq!(
        Exchange::new(demo_keys(), LowCounter::from(1)).seal_bound(),
        1 << 31
    );
}

/// Batches sealing at once, from eight threads, are counted exactly: every
/// key but the last seals exactly the bound, none more, and no key index is
/// used twice.
#[test]
fn parallel_batches_reserve_exact_counts() {
    let policy = fugo::policy::parse(POLICY).unwrap();
    let exchange = Exchange::new(demo_keys(), LowCounter::from(7)).with_seal_bound(100);
    let numbers = numbers(37);
    let codes = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers))
        .unwrap());
    let tokens: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut tokens = Vec::new();
                    for _ in 0..12 {
                        tokens.extend(seal_batches(&exchange, &policy, &codes, &[37]));
                    }
                    tokens
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(tokens.len(), 8 * 12 * 37);
    let mut counts: Vec<usize> = tokens_per_key(&tokens)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    counts.sort_unstable();
    // 3,552 tokens: 35 full keys and one of 52.
    assert_eq!(counts.len(), 36);
    assert_eq!(counts[0], 52);
    assert!(counts[1..].iter().all(|&c| c == 100), "{counts:?}");
    // Tokens come back per thread, in batch order: redeem them against
    // the codes of the batch they came from.
    assert_all_redeem(&exchange, &policy, &tokens, &numbers);
}

/// A random source that gives the same key index again cannot make the
/// exchange reuse a key: sealing past the bound fails instead.
#[test]
fn a_source_repeating_key_indices_stops_sealing_rather_than_reuse_a_key() {
    let policy = fugo::policy::parse(POLICY).unwrap();
    // `Counter` puts the high-order bytes of its counter in a 4-byte draw:
    // index 0, every time.
    let exchange = Exchange::new(demo_keys(), Box::new(Counter::default())).with_seal_bound(100);
    let numbers = numbers(150);
    let codes = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers))
        .unwrap());
    let tokens = seal_batches(&exchange, &policy, &codes, &[100]);
    assert_eq!(tokens_per_key(&tokens).len(), 1);
    let refused = exchange
        .seal(
            &policy,
            &id("mhlw"),
            &context("city-shinjuku", "local-tax"),
            &bytes(&codes[100..]),
            NOW,
        )
        .unwrap_err();
    assert_eq!(refused, BatchError::Random(RandomFailed));
}

/// The key index is authenticated: a token whose index was changed fails
/// authentication (the exchange opens it with the key the new index names),
/// and so do tokens with indices nobody sealed under.
#[test]
fn a_token_whose_key_index_was_changed_is_forged() {
    let policy = fugo::policy::parse(POLICY).unwrap();
    let exchange = Exchange::new(demo_keys(), LowCounter::from(1)).with_seal_bound(100);
    let numbers = numbers(150);
    let codes = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers))
        .unwrap());
    let tokens = seal_batches(&exchange, &policy, &codes, &[150]);
    let per_key = tokens_per_key(&tokens);
    let (first, second) = (per_key[0].0.index().unwrap(), per_key[1].0.index().unwrap());
    // Byte 7..11 is the index (after the format byte, the generation and
    // the window: format 3).
    let with_index = |token: &[u8], index: u32| {
        let mut changed = token.to_vec();
        changed[7..11].copy_from_slice(&index.to_be_bytes());
        changed
    };
    let altered = [
        // The other index this exchange really sealed under.
        with_index(&tokens[0], second),
        with_index(&tokens[120], first),
        with_index(&tokens[0], first ^ 1),
        with_index(&tokens[0], first ^ 0x8000_0000),
        with_index(&tokens[0], u32::MAX),
    ];
    let slices: Vec<&[u8]> = altered.iter().map(Vec::as_slice).collect();
    let result = exchange
        .redeem(&policy, &id("city-shinjuku"), &slices, NOW + 10)
        .unwrap();
    for (i, item) in result.iter().enumerate() {
        assert_eq!(
            item.as_ref().unwrap_err().error,
            ItemError::Token(TokenError::Forged),
            "item {i}"
        );
    }
    // The untouched tokens still redeem.
    assert_all_redeem(&exchange, &policy, &tokens, &numbers);
}

/// Tokens of format 1 (window only, sealed before key indices) redeem as
/// before, next to format-3 tokens in the same batch.
#[test]
fn format_one_tokens_still_redeem() {
    use fugo::token::{Claims, KeyName, SealKey, Serial, Window};
    let policy = fugo::policy::parse(POLICY).unwrap();
    let exchange = Exchange::new(demo_keys(), LowCounter::from(1));
    let keys = demo_keys();
    let numbers = numbers(2);
    let number = MyNumber::parse(numbers[0].as_bytes()).unwrap();
    let handle = Coder::new(&keys, id("mhlw"), Epoch::new(1).unwrap()).handle(&number);
    let claims = Claims {
        handle,
        serial: Serial::from_bytes([5; 16]),
        requester: id("mhlw"),
        affair: AffairId::new("health").unwrap(),
        items: vec![ItemId::new("local-tax").unwrap()],
        expires_at: NOW + 3600,
        non_disclosure_until: None,
    };
    let old_key = SealKey::new(
        &keys,
        &id("city-shinjuku"),
        KeyName::format1(Window::containing(NOW)),
    )
    .unwrap();
    let old = old_key.seal(&claims, [1; 12]).unwrap().as_bytes().to_vec();
    assert_eq!(old[0], 1);
    let codes = ok(exchange
        .derive(&policy, &id("mhlw"), &bytes(&numbers[1..]))
        .unwrap());
    let new = seal_batches(&exchange, &policy, &codes, &[1]);
    assert_eq!(new[0][0], 3);
    assert_all_redeem(&exchange, &policy, &[old.clone(), new[0].clone()], &numbers);
    // Format 1 is still authenticated: a changed tag byte opens nothing.
    let mut changed = old.clone();
    *changed.last_mut().unwrap() ^= 1;
    let result = exchange
        .redeem(&policy, &id("city-shinjuku"), &[&changed], NOW + 10)
        .unwrap();
    assert_eq!(
        result[0].as_ref().unwrap_err().error,
        ItemError::Token(TokenError::Forged)
    );
}
