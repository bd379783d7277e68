//! C2SP signed notes with Ed25519 keys, and the C2SP tlog checkpoint they carry: keys in the
//! `name+keyid+base64` text forms the Go `sumdb/note` package and the transparency-dev tools
//! use, so their verifiers read Warden's checkpoints and Warden's verifier reads theirs.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;

/// The signature type byte of Ed25519 note keys.
const ED25519: u8 = 0x01;
/// A note's text and signature lines are bounded, so hostile input costs little.
const MAX_NOTE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("no valid signature by {0} on the note")]
    Unverified(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
}

/// A key name may not be empty or contain spaces or `+` (C2SP signed-note).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(name.as_bytes());
    context.update(b"\n");
    context.update(&[ED25519]);
    context.update(public);
    let digest = context.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&digest.as_ref()[..4]);
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs notes as `name`.
pub struct NoteSigner {
    name: String,
    key: Ed25519KeyPair,
    id: [u8; 4],
}

impl NoteSigner {
    fn from_seed(name: &str, seed: &[u8]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(format!("invalid key name `{name}`")));
        }
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::Key("not an Ed25519 seed".into()))?;
        let id = key_id(name, key.public_key().as_ref());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<keyid>+<base64(0x01 ‖ seed)>`.
    pub fn from_private_key(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::Key("a private key starts with PRIVATE+KEY+".into()))?;
        let (name, id, key) = split_key(rest)?;
        let key = B64
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64".into()))?;
        match key.split_first() {
            Some((&ED25519, seed)) if seed.len() == 32 => {
                let signer = Self::from_seed(name, seed)?;
                if hex(&signer.id) != id {
                    return Err(NoteError::Key("the key id does not match the key".into()));
                }
                Ok(signer)
            }
            _ => Err(NoteError::Key("not an Ed25519 private key".into())),
        }
    }

    /// The public verifier key: `<name>+<keyid>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.public_key().as_ref());
        format!("{}+{}+{}", self.name, hex(&self.id), B64.encode(key))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `text` (which ends with a newline), a blank line, and this key's signature line.
    pub fn sign(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// A new signing key with its private text form, for `warden audit keygen`.
/// Reads the signing key at `path`, or makes one named `name` (readable by its owner only) with
/// its public key beside it (`<path>.pub`, extension replaced).
pub fn load_or_create_signer(path: &std::path::Path, name: &str) -> std::io::Result<NoteSigner> {
    use std::io::Write as _;
    let unusable = |e: NoteError| {
        std::io::Error::other(format!("the audit key {} is unusable: {e}", path.display()))
    };
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot read the audit key {}: {e}", path.display()),
            )
        })?;
        return NoteSigner::from_private_key(&text).map_err(unusable);
    }
    let (signer, private) = generate_private_key(name).map_err(unusable)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create the audit key {}: {e}", path.display()),
                )
            })?
    };
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    let public = path.with_extension("pub");
    std::fs::write(&public, format!("{}\n", signer.verifier_key())).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot write {}: {e}", public.display()))
    })?;
    Ok(signer)
}

pub fn generate_private_key(name: &str) -> Result<(NoteSigner, String), NoteError> {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| NoteError::Key("no randomness".into()))?;
    let signer = NoteSigner::from_seed(name, &seed)?;
    let mut key = vec![ED25519];
    key.extend_from_slice(&seed);
    let text = format!(
        "PRIVATE+KEY+{}+{}+{}",
        signer.name,
        hex(&signer.id),
        B64.encode(key)
    );
    Ok((signer, text))
}

fn split_key(text: &str) -> Result<(&str, &str, &str), NoteError> {
    let mut parts = text.splitn(3, '+');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(id), Some(key)) if valid_name(name) && id.len() == 8 => {
            Ok((name, id, key))
        }
        _ => Err(NoteError::Key(
            "expected <name>+<8 hex digit key id>+<base64 key>".into(),
        )),
    }
}

/// Checks notes against one public key.
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl NoteVerifier {
    /// Reads `<name>+<keyid>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = split_key(text.trim())?;
        let key = B64
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64".into()))?;
        match key.split_first() {
            Some((&ED25519, public)) if public.len() == 32 => {
                let computed = key_id(name, public);
                if hex(&computed) != id {
                    return Err(NoteError::Key("the key id does not match the key".into()));
                }
                Ok(Self {
                    name: name.to_owned(),
                    id: computed,
                    public: public.to_vec(),
                })
            }
            _ => Err(NoteError::Key("not an Ed25519 verifier key".into())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The note's text if one of its signatures is this key's and verifies.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("larger than 1 MiB".into()));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the signature lines must end with a newline".into(),
            ));
        }
        let public = signature::UnparsedPublicKey::new(&signature::ED25519, &self.public);
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(format!(
                    "not a signature line: {}",
                    line.chars().take(80).collect::<String>()
                )));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(
                    "a signature line has no signature".into(),
                ));
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = B64.decode(blob) else {
                continue;
            };
            if blob.len() == 68
                && blob[..4] == self.id
                && public.verify(text.as_bytes(), &blob[4..]).is_ok()
            {
                return Ok(text);
            }
        }
        Err(NoteError::Unverified(self.name.clone()))
    }
}

/// A tlog checkpoint (C2SP tlog-checkpoint): the log's origin, its size, and its root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.lines();
        let bad = |what: &str| NoteError::Checkpoint(what.to_owned());
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && (s == &"0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("the size line is not a decimal number"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("the root line is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The golang.org/x/mod/sumdb/note example.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_published_signed_note_vector_signs_and_verifies() {
        let signer = NoteSigner::from_private_key(PETER_SKEY).unwrap();
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        assert_eq!(signer.sign(PETER_TEXT), PETER_NOTE);
        let verifier = NoteVerifier::parse(PETER_VKEY).unwrap();
        assert_eq!(verifier.open(PETER_NOTE).unwrap(), PETER_TEXT);
    }

    #[test]
    fn altered_notes_and_other_keys_are_refused() {
        let verifier = NoteVerifier::parse(PETER_VKEY).unwrap();
        let altered = PETER_NOTE.replace("cryptography", "cryptographY");
        assert_eq!(
            verifier.open(&altered),
            Err(NoteError::Unverified("PeterNeumann".into()))
        );
        let (other, private) = generate_private_key("PeterNeumann").unwrap();
        assert_eq!(
            NoteSigner::from_private_key(&private)
                .unwrap()
                .verifier_key(),
            other.verifier_key()
        );
        assert!(verifier.open(&other.sign(PETER_TEXT)).is_err());
        for bad in [
            "",
            "no blank line\n",
            "text\n\n- PeterNeumann abc\n",
            "text\n\n\u{2014} PeterNeumann",
        ] {
            assert!(verifier.open(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+AhpzZ2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoints_round_trip_and_reject_malformed_bodies() {
        let checkpoint = Checkpoint {
            origin: "warden.local/audit".into(),
            size: 42,
            root: [7; 32],
        };
        assert_eq!(Checkpoint::parse(&checkpoint.body()).unwrap(), checkpoint);
        for bad in [
            "",
            "o\n-1\nAAAA\n",
            "o\n01\n",
            "o\n1\nnotbase64\n",
            "o\n1\nAAAA\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
