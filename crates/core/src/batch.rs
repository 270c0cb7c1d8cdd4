//! Batched derivation from ASCII numbers to text codes: the hot path of
//! every bulk job.
//!
//! Numbers are parsed straight into person blocks (no per-row allocation),
//! a whole batch goes through each AES layer at once so the cipher can
//! pipeline. Both layers encrypt in place, so numbers and handles live in
//! the buffer only between parsing and encryption.

use zeroize::Zeroize;

use crate::code::{Coder, person_block};
use crate::code_text::{self, TEXT_LEN};
use crate::link::{Linker, PersonLink};
use crate::mynumber::{self, ParseError};
use crate::persons::{Persons, Superseded};

/// Rows per batch: large enough to keep the AES pipeline full, small enough
/// to stay in L1/L2 cache.
pub const BATCH: usize = 512;

/// Reusable derivation state for one thread.
pub struct BatchDeriver<'c> {
    coder: &'c Coder,
    blocks: Vec<[u8; 16]>,
    links: Vec<[u8; 16]>,
    /// Working space of re-issue resolution.
    scratch: Vec<[u8; 16]>,
}

/// Re-issue resolution of one call: the tables and how a superseded
/// number's error is made.
type Resolve<'p, E> = Option<(&'p Persons, &'p dyn Fn() -> E)>;

impl<'c> BatchDeriver<'c> {
    /// A deriver for `coder`'s agency and epoch.
    pub fn new(coder: &'c Coder) -> Self {
        BatchDeriver {
            coder,
            blocks: Vec::with_capacity(BATCH),
            links: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Derives a code for each input, calling `emit` once per input, in input
    /// order, with the 29-character text or the reason there is none.
    ///
    /// An input may already be an error (say, a line too long to be a
    /// number); it is passed through to `emit` in its place, which is how
    /// callers keep their own row errors in order with parse errors.
    pub fn derive<'a, I, E, F>(&mut self, inputs: I, mut emit: F)
    where
        I: IntoIterator<Item = Result<&'a [u8], E>>,
        E: From<ParseError>,
        F: FnMut(Result<&[u8; TEXT_LEN], E>),
    {
        self.run(inputs, None, None, |result| {
            emit(result.map(|(text, _)| text))
        });
    }

    /// [`derive`](Self::derive) after re-issue resolution: a re-issued
    /// number gives its person's original codes, a superseded one the
    /// error [`Superseded`] (see [`crate::persons`]).
    pub fn derive_resolved<'a, I, E, F>(&mut self, persons: &Persons, inputs: I, mut emit: F)
    where
        I: IntoIterator<Item = Result<&'a [u8], E>>,
        E: From<ParseError> + From<Superseded>,
        F: FnMut(Result<&[u8; TEXT_LEN], E>),
    {
        let superseded = || E::from(Superseded);
        self.run(inputs, None, Some((persons, &superseded)), |result| {
            emit(result.map(|(text, _)| text))
        });
    }

    /// [`derive_linked`](Self::derive_linked) after re-issue resolution
    /// (see [`derive_resolved`](Self::derive_resolved)): the link is the
    /// person's, made from the original number.
    pub fn derive_linked_resolved<'a, I, E, F>(
        &mut self,
        persons: &Persons,
        linker: &Linker,
        inputs: I,
        emit: F,
    ) where
        I: IntoIterator<Item = Result<&'a [u8], E>>,
        E: From<ParseError> + From<Superseded>,
        F: FnMut(Result<(&[u8; TEXT_LEN], PersonLink), E>),
    {
        let superseded = || E::from(Superseded);
        self.run(inputs, Some(linker), Some((persons, &superseded)), emit);
    }

    /// [`derive`](Self::derive), also handing `emit` each person's link for
    /// the audit trail (one more batched AES layer, on a copy of the
    /// handles).
    pub fn derive_linked<'a, I, E, F>(&mut self, linker: &Linker, inputs: I, emit: F)
    where
        I: IntoIterator<Item = Result<&'a [u8], E>>,
        E: From<ParseError>,
        F: FnMut(Result<(&[u8; TEXT_LEN], PersonLink), E>),
    {
        self.run(inputs, Some(linker), None, emit);
    }

    /// Both forms; without a linker every link handed to `emit` is all
    /// zeros (and `derive` drops it).
    fn run<'a, I, E, F>(
        &mut self,
        inputs: I,
        linker: Option<&Linker>,
        resolve: Resolve<'_, E>,
        mut emit: F,
    ) where
        I: IntoIterator<Item = Result<&'a [u8], E>>,
        E: From<ParseError>,
        F: FnMut(Result<(&[u8; TEXT_LEN], PersonLink), E>),
    {
        let mut inputs = inputs.into_iter().peekable();
        let mut outcomes: Vec<Result<(), E>> = Vec::with_capacity(BATCH);
        while inputs.peek().is_some() {
            self.blocks.clear();
            outcomes.clear();
            for input in inputs.by_ref().take(BATCH) {
                match input.and_then(|bytes| mynumber::parse_value(bytes).map_err(E::from)) {
                    Ok(mut value) => {
                        self.blocks.push(person_block(value));
                        value.zeroize();
                        outcomes.push(Ok(()));
                    }
                    Err(error) => outcomes.push(Err(error)),
                }
            }
            if let Some((persons, superseded)) = resolve {
                let removed = persons.resolve_blocks(&mut self.blocks, &mut self.scratch);
                refuse(&mut outcomes, &removed, superseded);
            }
            match linker {
                // Codes of the audit trail's generation: link their handles.
                Some(linker) if linker.generation() == self.coder.generation() => {
                    self.coder.person_layer(&mut self.blocks);
                    self.links.clear();
                    self.links.extend_from_slice(&self.blocks);
                    linker.link_blocks(&mut self.links);
                }
                // Codes of another generation: the link is of the audit
                // generation's handle, made from the number itself (both
                // copies are encrypted in place before anything else).
                Some(linker) => {
                    self.links.clear();
                    self.links.extend_from_slice(&self.blocks);
                    linker.link_person_blocks(&mut self.links);
                    self.coder.person_layer(&mut self.blocks);
                }
                None => self.coder.person_layer(&mut self.blocks),
            }
            self.coder.agency_layer(&mut self.blocks);
            let epoch = self.coder.epoch();
            let mut codes = self.blocks.iter();
            let mut links = self.links.iter();
            for outcome in outcomes.drain(..) {
                match outcome {
                    Ok(()) => {
                        if let Some(code) = codes.next() {
                            let link = links.next().copied().unwrap_or_default();
                            let link = PersonLink::from_bytes(link);
                            emit(Ok((&code_text::encode(epoch, code), link)));
                        }
                    }
                    Err(error) => emit(Err(error)),
                }
            }
            // No wipe needed here: encryption overwrote every number and
            // handle in place, so the buffers now hold only the codes and
            // links just emitted. Drop wipes them anyway.
        }
    }
}

impl Drop for BatchDeriver<'_> {
    fn drop(&mut self) {
        self.blocks.zeroize();
        self.links.zeroize();
        self.scratch.zeroize();
    }
}

/// Turns the outcomes of the parsed items at positions `removed` (counting
/// parsed items only, ascending) into the superseded error.
fn refuse<E>(outcomes: &mut [Result<(), E>], removed: &[usize], superseded: &dyn Fn() -> E) {
    if removed.is_empty() {
        return;
    }
    let mut next = removed.iter().peekable();
    let parsed = outcomes.iter_mut().filter(|outcome| outcome.is_ok());
    for (position, outcome) in parsed.enumerate() {
        if next.peek() == Some(&&position) {
            *outcome = Err(superseded());
            next.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::{AgencyId, Epoch};
    use crate::keys::{KeyHierarchy, MasterKey};
    use crate::mynumber::MyNumber;

    #[test]
    fn keeps_order_and_reports_bad_rows() {
        let keys = KeyHierarchy::new(&MasterKey::from_bytes([7; 32]));
        let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(3).unwrap());
        let mut inputs: Vec<&[u8]> = Vec::new();
        for i in 0..1500 {
            inputs.push(if i % 7 == 3 {
                b"123456789012"
            } else {
                b"123456789018"
            });
        }
        let expected = coder
            .derive(&MyNumber::parse(b"123456789018").unwrap())
            .to_text();
        let mut seen = Vec::new();
        BatchDeriver::new(&coder).derive(inputs.iter().map(|i| Ok::<_, ParseError>(*i)), |r| {
            seen.push(r.copied())
        });
        assert_eq!(seen.len(), 1500);
        for (i, result) in seen.iter().enumerate() {
            if i % 7 == 3 {
                assert_eq!(*result, Err(ParseError::CheckDigit));
            } else {
                assert_eq!(*result, Ok(expected));
            }
        }
    }

    /// A person's link is the same whichever generation their codes are
    /// derived under: the audit trail sees one person across a rotation.
    #[test]
    fn links_are_of_the_audit_generation_whatever_the_codes() {
        let one = KeyHierarchy::new(&MasterKey::from_bytes([7; 32]));
        let two = KeyHierarchy::of_generation(
            &MasterKey::from_bytes([8; 32]),
            crate::generation::Generation::new(2).unwrap(),
        );
        let linker = Linker::new(&one);
        let nta = AgencyId::new("nta").unwrap();
        let mut links = Vec::new();
        for keys in [&one, &two] {
            let coder = Coder::new(keys, nta.clone(), Epoch::new(1).unwrap());
            let mut got = Vec::new();
            BatchDeriver::new(&coder).derive_linked(
                &linker,
                [Ok::<_, ParseError>(b"123456789018".as_slice())],
                |r| got.push(r.map(|(text, link)| (*text, link)).unwrap()),
            );
            let number = MyNumber::parse(b"123456789018").unwrap();
            assert_eq!(got[0].0, coder.derive(&number).to_text());
            links.push(got[0].1);
        }
        assert_eq!(links[0], links[1]);
        let number = MyNumber::parse(b"123456789018").unwrap();
        let handle = Coder::new(&one, nta, Epoch::new(1).unwrap()).handle(&number);
        assert_eq!(linker.link(&handle).unwrap(), links[0]);
    }
}
