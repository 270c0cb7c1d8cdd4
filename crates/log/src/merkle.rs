//! The RFC 6962 Merkle tree over the log's records: hashing, the right edge
//! of the tree ([`Frontier`]) that appends and computes the root in O(log n),
//! and inclusion and consistency proofs with their verification.
//!
//! Hashes are domain-separated as in RFC 6962 §2.1: a leaf is
//! `SHA-256(0x00 ‖ record)`, an inner node `SHA-256(0x01 ‖ left ‖ right)`,
//! so a leaf can never be passed off as a node. A tree of n leaves splits
//! at the largest power of two k < n: the left subtree is always perfect.
//!
//! The module is pure: it stores nothing. Proofs read the roots of perfect
//! subtrees through [`NodeSource`], which the store implements over its
//! tiles (and a test over a `Vec`). Proof formats are those of RFC 6962
//! §2.1.1 / §2.1.2; verification follows RFC 9162 §2.1.3.2 / §2.1.4.2.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 hash: a leaf hash, an inner node or a root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an inner node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of one record: `SHA-256(0x00 ‖ record)`.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(record);
    hasher.finalize().into()
}

/// The hash of an inner node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// SHA-256 of the empty string: the root of the empty tree (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// What is wrong with a request to the tree or with a proof.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MerkleError {
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size it was asked in.
        size: u64,
    },
    /// A consistency request whose old size is larger than the new one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesOutOfOrder {
        /// The older (smaller) size given.
        old: u64,
        /// The newer (larger) size given.
        new: u64,
    },
    /// A leaf range that is empty, reversed, or does not start where RFC
    /// 6962's recursion puts a subtree (start a multiple of the smallest
    /// power of two that is at least the range's length).
    #[error("leaf range [{start}, {end}) is not a subtree range of RFC 6962")]
    BadRange {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf of the range.
        end: u64,
    },
    /// Stored frontier parts that do not fit together: a tree of `size`
    /// leaves has one node per binary one of `size`.
    #[error("a frontier of size {size} needs {expected} nodes, got {got}")]
    FrontierMismatch {
        /// The stored size.
        size: u64,
        /// The node count that size needs.
        expected: u32,
        /// The node count given.
        got: usize,
    },
    /// The inclusion proof does not prove the leaf under the root.
    #[error("inclusion proof does not verify")]
    InclusionFailed,
    /// The consistency proof does not prove the old root a prefix of the new.
    #[error("consistency proof does not verify")]
    ConsistencyFailed,
}

/// A proof request that failed: the node source could not answer, or the
/// request itself was wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProofError<E> {
    /// The node source failed to read a node.
    #[error("reading a tree node: {0}")]
    Source(E),
    /// The request was wrong (index out of range, sizes out of order, ...).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// The right edge of a tree (compact range): the roots of its perfect
/// subtrees, largest (leftmost) first. O(log n) hashes; enough to append and
/// to compute the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees, largest (leftmost) first: one per
    /// binary one of [`size`](Self::size), from the highest bit down.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Rebuilds from stored parts; refuses a node count that does not match
    /// size's binary ones.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, MerkleError> {
        let expected = size.count_ones();
        if nodes.len() != expected as usize {
            return Err(MerkleError::FrontierMismatch {
                size,
                expected,
                got: nodes.len(),
            });
        }
        Ok(Self { size, nodes })
    }

    /// Appends one leaf hash; calls `completed(level, index, &hash)` for every
    /// perfect subtree the append completes: first (0, leaf index, leaf),
    /// then level 1, 2, ... (index = its position among nodes of that level).
    ///
    /// # Panics
    ///
    /// When the tree already has 2^64 − 1 leaves (centuries of appends at
    /// a billion a second): its size would no longer fit a `u64`.
    pub fn append(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, &Hash)) {
        let index = self.size;
        let Some(new_size) = index.checked_add(1) else {
            panic!("the Merkle tree is full: 2^64 - 1 leaves");
        };
        let mut hash = leaf;
        let mut level: u8 = 0;
        completed(level, index, &hash);
        // The leaf closes one subtree per trailing binary one of its index:
        // each merges with the frontier's rightmost node.
        while (index >> level) & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                // Unreachable: the frontier holds one node per binary one of
                // `size` (from_parts and append keep that invariant).
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, index >> level, &hash);
        }
        self.nodes.push(hash);
        self.size = new_size;
    }

    /// The RFC 6962 root of the tree so far (empty_root() when empty).
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }
}

/// Folds the roots of consecutive perfect subtrees, largest first, into the
/// RFC 6962 root of their concatenation: `n0 ⊕ (n1 ⊕ (n2 ⊕ …))`.
fn fold_right(nodes: &[Hash]) -> Hash {
    let mut iter = nodes.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |right, left| node_hash(left, &right))
}

/// Where the hashes of perfect subtrees are stored: `node(level, index)` is
/// the root of leaves [index·2^level, (index+1)·2^level).
pub trait NodeSource {
    /// Why a node could not be read.
    type Error;
    /// The root of the perfect subtree at `level` and `index`; level 0 is
    /// the leaf hashes.
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// The smallest power of two at least `n` (`n` ≥ 1), as a bit count: the
/// level of the smallest perfect subtree that can hold `n` leaves.
fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        u64::BITS - (n - 1).leading_zeros()
    }
}

/// The largest power of two strictly less than `n` (`n` ≥ 2): where RFC
/// 6962 splits a tree of `n` leaves.
fn split_point(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for start aligned as RFC 6962's recursion produces.
///
/// The range must be non-empty (except `[0, 0)`, the empty tree, whose root
/// is [`empty_root`]), and `start` a multiple of the smallest power of two
/// at least `end − start`; every subtree the RFC 6962 recursion visits is
/// such a range. Reads at most 64 nodes.
pub fn range_root<S: NodeSource>(
    source: &mut S,
    start: u64,
    end: u64,
) -> Result<Hash, ProofError<S::Error>> {
    if start == 0 && end == 0 {
        return Ok(empty_root());
    }
    if start >= end {
        return Err(MerkleError::BadRange { start, end }.into());
    }
    let width = ceil_log2(end - start);
    if width < u64::BITS && !start.is_multiple_of(1u64 << width) {
        return Err(MerkleError::BadRange { start, end }.into());
    }
    // Split into perfect subtrees, largest first: with `start` aligned as
    // checked, each lies on its own level's grid.
    let mut nodes = Vec::with_capacity(64);
    let mut pos = start;
    while pos < end {
        let level = (u64::BITS - 1 - (end - pos).leading_zeros()) as u8;
        nodes.push(
            source
                .node(level, pos >> level)
                .map_err(ProofError::Source)?,
        );
        pos += 1 << level;
    }
    Ok(fold_right(&nodes))
}

/// The RFC 6962 §2.1.1 audit path of leaf `index` in the tree of `size`
/// leaves: sibling hashes from the leaf up to the root.
pub fn inclusion_proof<S: NodeSource>(
    source: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size }.into());
    }
    // PATH(m, D[start:end]) walked from the root down; the siblings found
    // on the way are the proof read backwards.
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            proof.push(range_root(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_root(source, start, start + k)?);
            start += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The RFC 6962 §2.1.2 consistency proof from the tree of `old_size` leaves
/// to the tree of `new_size` leaves. Empty when `old_size` is 0 or equal to
/// `new_size`.
pub fn consistency_proof<S: NodeSource>(
    source: &mut S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old_size > new_size {
        return Err(MerkleError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        }
        .into());
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b) walked from the root down; as in
    // inclusion_proof, the hashes found are the proof read backwards.
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, new_size);
    let mut whole = true; // b: the old tree is the whole of D[0:m] so far
    let m = old_size;
    loop {
        if m == end {
            // SUBPROOF(m, D[m], b): nothing when the old root is known to
            // the verifier, else the root of this subtree.
            if !whole {
                proof.push(range_root(source, start, end)?);
            }
            break;
        }
        let k = split_point(end - start);
        if m <= start + k {
            proof.push(range_root(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_root(source, start, start + k)?);
            start += k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves whose root
/// is `root`, by the audit path `proof` (RFC 9162 §2.1.3.2).
///
/// The proof binds the leaf to the root, not to the size: another size
/// whose path has the same left/right shape (leaf 0 of sizes 3 and 4)
/// accepts the same proof. Take size and root together from a verified
/// checkpoint, as RFC 9162 does from a signed tree head.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return Err(MerkleError::InclusionFailed);
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && hash == *root {
        Ok(())
    } else {
        Err(MerkleError::InclusionFailed)
    }
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a
/// prefix of the tree of `new_size` leaves with root `new_root`, by the
/// consistency proof `proof` (RFC 9162 §2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots; old size 0 needs an
/// empty proof and `old_root` = [`empty_root`]. As with
/// [`verify_inclusion`], the sizes are only as trustworthy as the roots they
/// come with: take both from verified checkpoints.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizesOutOfOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return if proof.is_empty() && *old_root == empty_root() {
            Ok(())
        } else {
            Err(MerkleError::ConsistencyFailed)
        };
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(MerkleError::ConsistencyFailed)
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(MerkleError::ConsistencyFailed);
    };
    // When the old tree is a perfect subtree, its root is the proof's
    // implicit first element.
    let (start, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*start, *start);
    for c in path {
        if snode == 0 {
            return Err(MerkleError::ConsistencyFailed);
        }
        if fnode & 1 == 1 || fnode == snode {
            old_hash = node_hash(c, &old_hash);
            new_hash = node_hash(c, &new_hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && old_hash == *old_root && new_hash == *new_root {
        Ok(())
    } else {
        Err(MerkleError::ConsistencyFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An in-memory node source: every completed perfect subtree, by level,
    /// filled by `Frontier::append`'s callback (so the tests check it too).
    #[derive(Default)]
    struct Levels {
        frontier: Frontier,
        levels: Vec<Vec<Hash>>,
    }

    impl Levels {
        fn with_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
            let mut tree = Self::default();
            for leaf in leaves {
                tree.push(leaf);
            }
            tree
        }

        fn push(&mut self, leaf: Hash) {
            let levels = &mut self.levels;
            self.frontier.append(leaf, |level, index, hash| {
                let level = level as usize;
                if levels.len() <= level {
                    levels.resize(level + 1, Vec::new());
                }
                assert_eq!(levels[level].len() as u64, index, "nodes come in order");
                levels[level].push(*hash);
            });
        }
    }

    impl NodeSource for Levels {
        type Error = String;
        fn node(&mut self, level: u8, index: u64) -> Result<Hash, String> {
            self.levels
                .get(level as usize)
                .and_then(|nodes| nodes.get(index as usize))
                .copied()
                .ok_or_else(|| format!("no node at level {level} index {index}"))
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hash(text: &str) -> Hash {
        hex(text).try_into().unwrap()
    }

    // The Certificate Transparency reference vectors: the eight leaves and
    // the root of every prefix are those of the RFC 6962 reference
    // implementation's tests (certificate-transparency merkle_tree_test.cc),
    // republished as transparency-dev/merkle testonly/constants.go; the
    // empty root is SHA-256("").
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    // Proofs from the same test data (inclusion: leaf, size, path;
    // consistency: old size, new size, proof).
    const CT_INCLUSION: [(u64, u64, &[&str]); 2] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    const CT_CONSISTENCY: [(u64, u64, &[&str]); 4] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            2,
            8,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn ct_tree() -> Levels {
        Levels::with_leaves(CT_LEAVES.iter().map(|leaf| leaf_hash(&hex(leaf))))
    }

    #[test]
    fn ct_roots_of_every_prefix() {
        assert_eq!(empty_root(), hash(CT_ROOTS[0]));
        assert_eq!(Frontier::new().root(), hash(CT_ROOTS[0]));
        let mut tree = Levels::default();
        for (n, leaf) in CT_LEAVES.iter().enumerate() {
            tree.push(leaf_hash(&hex(leaf)));
            assert_eq!(
                tree.frontier.root(),
                hash(CT_ROOTS[n + 1]),
                "size {}",
                n + 1
            );
        }
        for end in 0..=8 {
            assert_eq!(
                range_root(&mut tree, 0, end).unwrap(),
                hash(CT_ROOTS[end as usize])
            );
        }
    }

    #[test]
    fn ct_inclusion_proofs() {
        let mut tree = ct_tree();
        for (index, size, path) in CT_INCLUSION {
            let want: Vec<Hash> = path.iter().map(|h| hash(h)).collect();
            assert_eq!(inclusion_proof(&mut tree, index, size).unwrap(), want);
            let leaf = leaf_hash(&hex(CT_LEAVES[index as usize]));
            let root = hash(CT_ROOTS[size as usize]);
            assert_eq!(verify_inclusion(&leaf, index, size, &want, &root), Ok(()));
        }
    }

    #[test]
    fn ct_consistency_proofs() {
        let mut tree = ct_tree();
        for (old, new, path) in CT_CONSISTENCY {
            let want: Vec<Hash> = path.iter().map(|h| hash(h)).collect();
            assert_eq!(consistency_proof(&mut tree, old, new).unwrap(), want);
            let (old_root, new_root) = (hash(CT_ROOTS[old as usize]), hash(CT_ROOTS[new as usize]));
            assert_eq!(
                verify_consistency(old, new, &old_root, &new_root, &want),
                Ok(())
            );
        }
    }

    #[test]
    fn append_reports_every_completed_subtree_in_order() {
        let mut calls = Vec::new();
        let mut frontier = Frontier::new();
        for i in 0..4u8 {
            frontier.append([i; 32], |level, index, _| calls.push((level, index)));
        }
        assert_eq!(
            calls,
            [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0)]
        );
        assert_eq!(frontier.size(), 4);
        assert_eq!(frontier.nodes().len(), 1);
    }

    #[test]
    fn from_parts_checks_the_node_count() {
        let tree = ct_tree();
        let mut frontier = Frontier::new();
        for i in 0..7u8 {
            frontier.append([i; 32], |_, _, _| {});
        }
        let rebuilt = Frontier::from_parts(7, frontier.nodes().to_vec()).unwrap();
        assert_eq!(rebuilt, frontier);
        assert_eq!(
            Frontier::from_parts(8, frontier.nodes().to_vec()),
            Err(MerkleError::FrontierMismatch {
                size: 8,
                expected: 1,
                got: 3
            })
        );
        assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
        assert_eq!(Frontier::from_parts(0, Vec::new()), Ok(Frontier::new()));
        // A rebuilt frontier appends as the original would have.
        let mut a = tree.frontier.clone();
        let mut b = Frontier::from_parts(a.size(), a.nodes().to_vec()).unwrap();
        a.append([9; 32], |_, _, _| {});
        b.append([9; 32], |_, _, _| {});
        assert_eq!(a, b);
    }

    #[test]
    fn bad_requests_are_named() {
        let mut tree = ct_tree();
        assert!(matches!(
            inclusion_proof(&mut tree, 8, 8),
            Err(ProofError::Merkle(MerkleError::IndexOutOfRange {
                index: 8,
                size: 8
            }))
        ));
        assert!(matches!(
            consistency_proof(&mut tree, 5, 3),
            Err(ProofError::Merkle(MerkleError::SizesOutOfOrder {
                old: 5,
                new: 3
            }))
        ));
        for (start, end) in [(3, 3), (5, 4), (1, 3), (2, 5), (4, 9)] {
            assert!(
                matches!(
                    range_root(&mut tree, start, end),
                    Err(ProofError::Merkle(MerkleError::BadRange { .. }))
                ),
                "[{start}, {end})"
            );
        }
        // Beyond what the source holds: the source's own error comes back.
        assert!(matches!(
            inclusion_proof(&mut tree, 0, 9),
            Err(ProofError::Source(_))
        ));
        let root = hash(CT_ROOTS[8]);
        assert_eq!(
            verify_inclusion(&root, 8, 8, &[], &root),
            Err(MerkleError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            verify_consistency(3, 2, &root, &root, &[]),
            Err(MerkleError::SizesOutOfOrder { old: 3, new: 2 })
        );
    }

    #[test]
    fn degenerate_consistency_cases() {
        let mut tree = ct_tree();
        let (r0, r4, r8) = (hash(CT_ROOTS[0]), hash(CT_ROOTS[4]), hash(CT_ROOTS[8]));
        assert!(consistency_proof(&mut tree, 0, 8).unwrap().is_empty());
        assert!(consistency_proof(&mut tree, 4, 4).unwrap().is_empty());
        assert_eq!(verify_consistency(0, 8, &r0, &r8, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 0, &r0, &r0, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 8, &r4, &r8, &[]),
            Err(MerkleError::ConsistencyFailed)
        );
        assert_eq!(
            verify_consistency(0, 8, &r0, &r8, &[r0]),
            Err(MerkleError::ConsistencyFailed)
        );
        assert_eq!(verify_consistency(4, 4, &r4, &r4, &[]), Ok(()));
        assert_eq!(
            verify_consistency(4, 4, &r4, &r8, &[]),
            Err(MerkleError::ConsistencyFailed)
        );
        assert_eq!(
            verify_consistency(4, 4, &r4, &r4, &[r4]),
            Err(MerkleError::ConsistencyFailed)
        );
        assert_eq!(
            verify_consistency(4, 8, &r4, &r8, &[]),
            Err(MerkleError::ConsistencyFailed)
        );
    }

    #[test]
    fn size_is_only_as_good_as_the_root() {
        // The documented limit of an inclusion proof: leaf 0 of the size-3
        // tree has the same path shape as leaf 0 of a size-4 tree, so the
        // proof alone does not pin the size; the signed checkpoint does.
        let mut tree = ct_tree();
        let proof = inclusion_proof(&mut tree, 0, 3).unwrap();
        let (leaf, root3) = (tree.levels[0][0], hash(CT_ROOTS[3]));
        assert_eq!(verify_inclusion(&leaf, 0, 4, &proof, &root3), Ok(()));
        assert_eq!(
            verify_inclusion(&leaf, 0, 5, &proof, &root3),
            Err(MerkleError::InclusionFailed)
        );
    }

    /// The left/right decisions the verifier takes for leaf `index` of
    /// `size` (true: the sibling is on the left), or None when no proof of
    /// that length fits. Two claims with the same shape accept the same
    /// proof; a wrong index or size is only detectable when the shape differs.
    fn inclusion_shape(index: u64, size: u64) -> Vec<bool> {
        let (mut fnode, mut snode) = (index, size - 1);
        let mut shape = Vec::new();
        while snode != 0 {
            let left = fnode & 1 == 1 || fnode == snode;
            shape.push(left);
            if left {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
            fnode >>= 1;
            snode >>= 1;
        }
        shape
    }

    /// The verifier's walk for a consistency proof from `old` to `new`
    /// (1 ≤ old < new): whether the old root is the implicit first hash,
    /// then per proof hash whether it joins both roots (true) or only the
    /// new one.
    fn consistency_shape(old: u64, new: u64) -> (bool, Vec<bool>) {
        let (mut fnode, mut snode) = (old - 1, new - 1);
        while fnode & 1 == 1 {
            fnode >>= 1;
            snode >>= 1;
        }
        let mut shape = Vec::new();
        while snode != 0 {
            let both = fnode & 1 == 1 || fnode == snode;
            shape.push(both);
            if both {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
            fnode >>= 1;
            snode >>= 1;
        }
        (old.is_power_of_two(), shape)
    }

    fn leaves(n: u64) -> impl Iterator<Item = Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(
            size in 1u64..600,
            index_seed: u64,
            other_seed: u64,
            flip_seed: u64,
        ) {
            let mut tree = Levels::with_leaves(leaves(size));
            let index = index_seed % size;
            let leaf = tree.levels[0][index as usize];
            let root = tree.frontier.root();
            prop_assert_eq!(range_root(&mut tree, 0, size).unwrap(), root);
            let proof = inclusion_proof(&mut tree, index, size).unwrap();
            prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));

            // One bit flipped anywhere: in the leaf, the root or the path.
            let bits = 256 * (2 + proof.len() as u64);
            let bit = flip_seed % bits;
            let (which, byte, mask) = (bit / 256, (bit % 256 / 8) as usize, 1u8 << (bit % 8));
            let (mut leaf2, mut root2, mut proof2) = (leaf, root, proof.clone());
            match which {
                0 => leaf2[byte] ^= mask,
                1 => root2[byte] ^= mask,
                n => proof2[n as usize - 2][byte] ^= mask,
            }
            prop_assert_eq!(
                verify_inclusion(&leaf2, index, size, &proof2, &root2),
                Err(MerkleError::InclusionFailed)
            );

            // Another index of the same tree.
            let other = other_seed % size;
            if other != index {
                prop_assert!(verify_inclusion(&leaf, other, size, &proof, &root).is_err());
            }
            // Another size: rejected unless its path has the same shape
            // (see size_is_only_as_good_as_the_root).
            let other_size = 1 + other_seed % 1200;
            if other_size != size {
                let accepted = verify_inclusion(&leaf, index, other_size, &proof, &root).is_ok();
                let same_shape = index < other_size
                    && inclusion_shape(index, other_size) == inclusion_shape(index, size);
                prop_assert_eq!(accepted, same_shape);
            }
            // A proof one hash short or one hash long.
            if !proof.is_empty() {
                prop_assert!(verify_inclusion(&leaf, index, size, &proof[1..], &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
        }

        #[test]
        fn consistency_proofs_verify_and_tampering_fails(
            new_size in 1u64..600,
            old_seed: u64,
            other_seed: u64,
            flip_seed: u64,
        ) {
            let mut tree = Levels::with_leaves(leaves(new_size));
            let old_size = 1 + old_seed % new_size;
            let new_root = tree.frontier.root();
            let old_root = range_root(&mut tree, 0, old_size).unwrap();
            let proof = consistency_proof(&mut tree, old_size, new_size).unwrap();
            prop_assert_eq!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                Ok(())
            );
            if old_size == new_size {
                return Ok(());
            }

            let bits = 256 * (2 + proof.len() as u64);
            let bit = flip_seed % bits;
            let (which, byte, mask) = (bit / 256, (bit % 256 / 8) as usize, 1u8 << (bit % 8));
            let (mut old2, mut new2, mut proof2) = (old_root, new_root, proof.clone());
            match which {
                0 => old2[byte] ^= mask,
                1 => new2[byte] ^= mask,
                n => proof2[n as usize - 2][byte] ^= mask,
            }
            prop_assert_eq!(
                verify_consistency(old_size, new_size, &old2, &new2, &proof2),
                Err(MerkleError::ConsistencyFailed)
            );

            // Other sizes with the same roots and proof: rejected unless
            // the verifier's walk has the same shape.
            let other_old = 1 + other_seed % new_size;
            if other_old != old_size {
                let accepted =
                    verify_consistency(other_old, new_size, &old_root, &new_root, &proof).is_ok();
                let same = consistency_shape(other_old, new_size)
                    == consistency_shape(old_size, new_size);
                prop_assert_eq!(accepted, same);
            }
            let other_new = old_size + 1 + other_seed % 1200;
            if other_new != new_size {
                let accepted =
                    verify_consistency(old_size, other_new, &old_root, &new_root, &proof).is_ok();
                let same = consistency_shape(old_size, other_new)
                    == consistency_shape(old_size, new_size);
                prop_assert_eq!(accepted, same);
            }
            prop_assert!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof[1..]).is_err()
            );
            let mut longer = proof.clone();
            longer.push(new_root);
            prop_assert!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &longer).is_err()
            );
        }
    }
}
