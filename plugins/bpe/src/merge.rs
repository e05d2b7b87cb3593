//! The BPE model: a word's bytes become one symbol each, then adjacent pairs
//! merge, lowest rank first, until no pair has a merge.
//!
//! As in `tokenizers`, pending merges wait in a heap ordered by (rank,
//! position) over a linked list of symbols, so a word of n bytes takes
//! O(n log n) rather than the O(n²) of re-scanning for the best pair after
//! every merge. An entry is stale when the symbols at its position changed
//! since it was pushed; it is dropped unless the pair there now merges into
//! the same token, the same test `tokenizers` applies (which matters when two
//! different pairs spell the same token).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The ids of a merge's two tokens.
pub type Pair = (u32, u32);

/// What a pair merges into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merge {
    /// Its position in the merges list: lower merges first.
    pub rank: u32,
    /// The id of the merged token.
    pub id: u32,
}

/// A loaded BPE model.
#[derive(Debug)]
pub struct Bpe {
    /// The id of the one-character token that spells each byte, if the
    /// vocabulary has it.
    pub byte_ids: [Option<u32>; 256],
    pub merges: HashMap<Pair, Merge>,
    /// For a byte without a token: the unknown token, and whether runs of
    /// them fuse into one.
    pub unk: Option<(u32, bool)>,
}

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    /// False once merged into the symbol on its left.
    alive: bool,
}

impl Bpe {
    /// Appends the ids of the word spelt by `bytes` to `out`.
    pub fn encode_word(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(bytes.len());
        let mut last_was_unk = false;
        for &byte in bytes {
            let id = match (self.byte_ids[byte as usize], self.unk) {
                (Some(id), _) => {
                    last_was_unk = false;
                    id
                }
                // `tokenizers` drops a character it has no token for when
                // the model has no unknown token.
                (None, None) => continue,
                (None, Some((_, true))) if last_was_unk => continue,
                (None, Some((unk, _))) => {
                    last_was_unk = true;
                    unk
                }
            };
            let index = symbols.len();
            symbols.push(Symbol {
                id,
                prev: index.checked_sub(1).unwrap_or(NONE),
                next: index + 1,
                alive: true,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        self.merge_all(&mut symbols);
        out.extend(symbols.iter().filter(|s| s.alive).map(|s| s.id));
    }

    fn merge_at(&self, symbols: &[Symbol], left: usize) -> Option<Merge> {
        let right = symbols.get(symbols.get(left)?.next)?;
        self.merges.get(&(symbols[left].id, right.id)).copied()
    }

    fn merge_all(&self, symbols: &mut [Symbol]) {
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = (0..symbols.len())
            .filter_map(|pos| {
                let merge = self.merge_at(symbols, pos)?;
                Some(Reverse((merge.rank, pos, merge.id)))
            })
            .collect();
        while let Some(Reverse((_, pos, id))) = queue.pop() {
            if !symbols[pos].alive {
                continue;
            }
            if self.merge_at(symbols, pos).map(|m| m.id) != Some(id) {
                continue;
            }
            let right = symbols[pos].next;
            let after = symbols[right].next;
            symbols[right].alive = false;
            symbols[pos].id = id;
            symbols[pos].next = after;
            if let Some(s) = symbols.get_mut(after) {
                s.prev = pos;
            }
            let before = symbols[pos].prev;
            for left in [before, pos] {
                if let Some(merge) = self.merge_at(symbols, left) {
                    queue.push(Reverse((merge.rank, left, merge.id)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bpe, Merge};
    use std::collections::HashMap;

    /// Bytes a..d are ids 0..3; merges as (left, right, rank, id).
    fn model(merges: &[(u32, u32, u32, u32)], unk: Option<(u32, bool)>) -> Bpe {
        let mut byte_ids = [None; 256];
        for (i, b) in (b'a'..=b'd').enumerate() {
            byte_ids[b as usize] = Some(i as u32);
        }
        Bpe {
            byte_ids,
            merges: merges
                .iter()
                .map(|&(l, r, rank, id)| ((l, r), Merge { rank, id }))
                .collect::<HashMap<_, _>>(),
            unk,
        }
    }

    fn encode(bpe: &Bpe, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(word.as_bytes(), &mut out);
        out
    }

    #[test]
    fn lowest_rank_merges_first() {
        // ab = 10 (rank 1), bc = 11 (rank 0), a+bc = 12 (rank 2)
        let bpe = model(&[(0, 1, 1, 10), (1, 2, 0, 11), (0, 11, 2, 12)], None);
        assert_eq!(encode(&bpe, "abc"), [12]);
        assert_eq!(encode(&bpe, "ab"), [10]);
        assert_eq!(encode(&bpe, "abd"), [10, 3]);
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        // aa = 10; "aaa" is aa + a, not a + aa.
        let bpe = model(&[(0, 0, 0, 10), (10, 10, 1, 11)], None);
        assert_eq!(encode(&bpe, "aaa"), [10, 0]);
        assert_eq!(encode(&bpe, "aaaa"), [11]);
        assert_eq!(encode(&bpe, "aaaaa"), [11, 0]);
    }

    #[test]
    fn bytes_without_a_token_are_dropped_or_unknown() {
        // As in `tokenizers`: once the unknown bytes are gone, their
        // neighbours are adjacent and may merge.
        let bpe = model(&[(0, 1, 0, 10)], None);
        assert_eq!(encode(&bpe, "axxb"), [10]);
        assert_eq!(encode(&bpe, ""), Vec::<u32>::new());
        let bpe = model(&[], Some((99, false)));
        assert_eq!(encode(&bpe, "axxb"), [0, 99, 99, 1]);
        let bpe = model(&[], Some((99, true)));
        assert_eq!(encode(&bpe, "axxbx"), [0, 99, 1, 99]);
    }
}
