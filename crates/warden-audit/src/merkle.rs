//! RFC 6962 / RFC 9162 Merkle trees: leaf and node hashes, inclusion and consistency proofs
//! built from stored complete subtrees, and their verification (which needs nothing but the
//! proof and the roots).

use aws_lc_rs::digest;

pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of the empty tree.
pub fn empty_root() -> Hash {
    sha256(&[&[]])
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// SHA-256(0x00 ‖ record).
pub fn leaf_hash(record: &[u8]) -> Hash {
    sha256(&[&[0], record])
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1], left, right])
}

/// Hashes of complete subtrees: the node at `level` (0 for leaves) and `index` covers leaves
/// `[index << level, (index + 1) << level)`.
pub trait Nodes {
    fn node(&self, level: u32, index: u64) -> std::io::Result<Hash>;
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)`, from complete subtrees (`start` is aligned to the ranges the
/// RFC's recursion produces).
pub fn subtree_hash(nodes: &dyn Nodes, start: u64, end: u64) -> std::io::Result<Hash> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return nodes.node(level, start >> level);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree_hash(nodes, start, start + k)?,
        &subtree_hash(nodes, start + k, end)?,
    ))
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(nodes: &dyn Nodes, index: u64, size: u64) -> std::io::Result<Vec<Hash>> {
    fn path(
        nodes: &dyn Nodes,
        m: u64,
        start: u64,
        end: u64,
        out: &mut Vec<Hash>,
    ) -> std::io::Result<()> {
        let n = end - start;
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(nodes, m, start, start + k, out)?;
            out.push(subtree_hash(nodes, start + k, end)?);
        } else {
            path(nodes, m - k, start + k, end, out)?;
            out.push(subtree_hash(nodes, start, start + k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if index < size {
        path(nodes, index, 0, size, &mut out)?;
    }
    Ok(out)
}

/// The proof that the tree of `old` leaves is a prefix of the tree of `new` (RFC 9162 §2.1.4.1).
pub fn consistency_proof(nodes: &dyn Nodes, old: u64, new: u64) -> std::io::Result<Vec<Hash>> {
    fn subproof(
        nodes: &dyn Nodes,
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> std::io::Result<()> {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree_hash(nodes, start, end)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            subproof(nodes, m, start, start + k, whole, out)?;
            out.push(subtree_hash(nodes, start + k, end)?);
        } else {
            subproof(nodes, m - k, start + k, end, false, out)?;
            out.push(subtree_hash(nodes, start, start + k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if 0 < old && old < new {
        subproof(nodes, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

/// Whether `proof` shows leaf `index` with hash `leaf` in the tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// Whether `proof` shows the tree of `old` leaves with `old_root` to be a prefix of the tree of
/// `new` leaves with `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    if old > new || proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == old_root && &sr == new_root && s == 0
}

/// A tree held in memory, level by level: for tests, and for verifying a log from its records.
#[derive(Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let count = self.levels[level].len();
            if count % 2 == 1 {
                break;
            }
            hash = node_hash(
                &self.levels[level][count - 2],
                &self.levels[level][count - 1],
            );
            level += 1;
        }
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn root(&self) -> Hash {
        subtree_hash(self, 0, self.size()).unwrap_or_else(|_| empty_root())
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Hash {
        subtree_hash(self, 0, size.min(self.size())).unwrap_or_else(|_| empty_root())
    }
}

impl Nodes for MemoryTree {
    fn node(&self, level: u32, index: u64) -> std::io::Result<Hash> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| std::io::Error::other(format!("no node at level {level} index {index}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Hash {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The RFC 6962 test vectors (certificate-transparency reference implementations).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree() -> MemoryTree {
        let mut tree = MemoryTree::default();
        for leaf in LEAVES {
            tree.push(leaf_hash(leaf));
        }
        tree
    }

    #[test]
    fn roots_match_the_rfc_6962_vectors() {
        assert_eq!(
            MemoryTree::default().root(),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        let tree = tree();
        for (n, root) in ROOTS.iter().enumerate() {
            assert_eq!(tree.root_at(n as u64 + 1), hex(root), "size {}", n + 1);
        }
    }

    #[test]
    fn proofs_match_the_rfc_6962_vectors() {
        let tree = tree();
        for (index, size, want) in [
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ] {
            let want: Vec<Hash> = want.into_iter().map(hex).collect();
            assert_eq!(inclusion_proof(&tree, index, size).unwrap(), want);
        }
        for (old, new, want) in [
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ] {
            let want: Vec<Hash> = want.into_iter().map(hex).collect();
            assert_eq!(consistency_proof(&tree, old, new).unwrap(), want);
        }
    }

    #[test]
    fn every_proof_verifies_and_tampered_ones_do_not() {
        let mut tree = MemoryTree::default();
        for i in 0u32..70 {
            tree.push(leaf_hash(&i.to_be_bytes()));
        }
        for size in 1..=70u64 {
            let root = tree.root_at(size);
            for index in 0..size {
                let leaf = leaf_hash(&(index as u32).to_be_bytes());
                let proof = inclusion_proof(&tree, index, size).unwrap();
                assert!(verify_inclusion(index, size, &leaf, &proof, &root));
                assert!(!verify_inclusion(
                    index,
                    size,
                    &leaf_hash(b"other"),
                    &proof,
                    &root
                ));
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
                }
            }
            for old in 0..=size {
                let proof = consistency_proof(&tree, old, size).unwrap();
                let old_root = tree.root_at(old);
                assert!(
                    verify_consistency(old, size, &old_root, &root, &proof),
                    "{old} -> {size}"
                );
                if old > 0 && old < size {
                    let other = tree.root_at(old - 1);
                    assert!(!verify_consistency(old, size, &other, &root, &proof));
                    assert!(!verify_consistency(old, size, &old_root, &other, &proof));
                }
            }
        }
    }
}
