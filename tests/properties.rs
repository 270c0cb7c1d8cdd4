//! Property tests: round trips and uniqueness over random inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

mod common;

use std::collections::HashSet;

use fugo::agency::Epoch;
use fugo::batch::BatchDeriver;
use fugo::code::AgencyCode;
use fugo::code_text;
use fugo::mynumber::{MyNumber, ParseError};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn open_of_derive_gives_the_number_back(seed in 0u64..100_000_000_000, epoch in 1u8..=31) {
        let v = common::vectors();
        let coder = v.coder("demo", "city-shinjuku", epoch);
        let text = common::valid_number(seed);
        let number = MyNumber::parse(text.as_bytes()).unwrap();
        let code = coder.derive(&number);
        let reread = AgencyCode::parse(&code.to_text()).unwrap();
        prop_assert_eq!(reread, code);
        prop_assert_eq!(coder.reidentify(&reread).unwrap().expose_value(), number.expose_value());
    }

    #[test]
    fn text_form_round_trips(bytes in any::<[u8; 16]>(), epoch in 1u8..=31) {
        let epoch = Epoch::new(epoch).unwrap();
        let text = code_text::encode(epoch, &bytes);
        prop_assert_eq!(code_text::decode(&text).unwrap(), (epoch, bytes));
    }

    #[test]
    fn exactly_one_check_digit_is_accepted(seed in 0u64..100_000_000_000) {
        let valid = common::valid_number(seed);
        for last in b'0'..=b'9' {
            let mut candidate = valid.clone().into_bytes();
            candidate[11] = last;
            prop_assert_eq!(
                MyNumber::parse(&candidate).is_ok(),
                last == valid.as_bytes()[11]
            );
        }
    }
}

#[test]
fn batched_derivation_matches_one_at_a_time_and_codes_are_unique() {
    let v = common::vectors();
    let coder = v.coder("demo", "nta", 7);
    let numbers: Vec<String> = (0..20_000u64)
        .map(|i| common::valid_number(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let distinct: HashSet<&String> = numbers.iter().collect();
    let mut batched = Vec::new();
    BatchDeriver::new(&coder).derive(
        numbers.iter().map(|n| Ok::<_, ParseError>(n.as_bytes())),
        |r| batched.push(*r.unwrap()),
    );
    for (number, text) in numbers.iter().zip(&batched) {
        let single = coder.derive(&MyNumber::parse(number.as_bytes()).unwrap());
        assert_eq!(&single.to_text(), text);
    }
    let codes: HashSet<_> = batched.iter().collect();
    assert_eq!(codes.len(), distinct.len());
}

#[test]
fn one_person_has_unrelated_codes_at_different_agencies() {
    let v = common::vectors();
    let number = MyNumber::parse(b"983205673214").unwrap();
    let a = v.coder("demo", "city-shinjuku", 1).derive(&number);
    let b = v.coder("demo", "nta", 1).derive(&number);
    assert_ne!(a.bytes(), b.bytes());
    // No byte position agrees more than chance would allow.
    let equal = a
        .bytes()
        .iter()
        .zip(b.bytes())
        .filter(|(x, y)| x == y)
        .count();
    assert!(equal <= 3, "{equal} equal bytes");
}
