//! Signed `InRelease` files and the OpenPGP keyrings that verify them.
//!
//! Like apt 2.6, this accepts a Release file when at least one signature verifies against a
//! trusted key and no signature from a trusted key is bad. The signing key may be a primary
//! key or a signing subkey bound to it. Only the text inside the signed block is parsed, so text
//! around the cleartext block cannot inject fields.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Cursor;

use chrono::{DateTime, NaiveDateTime, Utc};
use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

/// An error verifying or parsing a Release file.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("invalid signed Release file from {url}")]
    Armor {
        url: String,
        #[source]
        source: pgp::errors::Error,
    },
    #[error("bad signature on the Release file from {url} by key {key_id}")]
    BadSignature { url: String, key_id: String },
    #[error(
        "no known key signed the Release file from {url}: signature key IDs {key_ids}, \
         keyrings tried: {keyrings}\n\
         hint: pass the repository's keyring with --keyring"
    )]
    NoKnownKey {
        url: String,
        key_ids: String,
        keyrings: String,
    },
    #[error(
        "the Release file from {url} expired at {valid_until} (now {now})\n\
         hint: the mirror is stale or the clock is wrong"
    )]
    Expired {
        url: String,
        valid_until: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("the Release file from {url} is dated {date}, in the future (now {now})")]
    NotYetValid {
        url: String,
        date: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("the Release file from {url} has no SHA256 file list")]
    MissingSha256 { url: String },
    #[error("invalid Release file from {url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// A set of trusted OpenPGP public keys and the names of the keyrings they came from.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    names: Vec<String>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a keyring file's bytes, binary (`.gpg`) or ASCII-armored (`.asc`).
    pub fn from_bytes(name: &str, data: &[u8]) -> Self {
        let mut keyring = Self::new();
        keyring.add_bytes(name, data);
        keyring
    }

    /// Adds the keys of one keyring file and returns how many parsed.
    ///
    /// A key that fails to parse is skipped with a debug log, because one unsupported key
    /// must not make every other key of the keyring unusable.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> usize {
        self.names.push(name.to_owned());
        let armored = data
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|start| data[start..].starts_with(b"-----BEGIN PGP"));
        let before = self.keys.len();
        if armored {
            // An armored file may hold several blocks one after another.
            let text = String::from_utf8_lossy(data);
            for block in text.split_inclusive("-----END PGP PUBLIC KEY BLOCK-----") {
                if !block.contains("-----BEGIN PGP") {
                    continue;
                }
                match SignedPublicKey::from_armor_many(Cursor::new(block.trim_start().as_bytes())) {
                    Ok((keys, _)) => self.collect(name, keys),
                    Err(error) => {
                        tracing::debug!(keyring = name, %error, "skipped an armored block")
                    }
                }
            }
        } else {
            match SignedPublicKey::from_bytes_many(Cursor::new(data)) {
                Ok(keys) => self.collect(name, keys),
                Err(error) => {
                    tracing::debug!(keyring = name, %error, "skipped an unreadable keyring")
                }
            }
        }
        let added = self.keys.len() - before;
        tracing::debug!(keyring = name, keys = added, "loaded keyring");
        added
    }

    fn collect(
        &mut self,
        name: &str,
        keys: impl Iterator<Item = pgp::errors::Result<SignedPublicKey>>,
    ) {
        for key in keys {
            match key {
                Ok(key) => self.keys.push(key),
                Err(error) => tracing::debug!(keyring = name, %error, "skipped a key"),
            }
        }
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: &Keyring) {
        self.keys.extend(other.keys.iter().cloned());
        self.names.extend(other.names.iter().cloned());
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Returns the names of the keyring files loaded, for messages.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// One file listed in a Release file's `SHA256:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// The fields of a Release file that apt uses to fetch indexes.
#[derive(Debug, Clone)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub date: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub acquire_by_hash: bool,
    /// `Architectures` lists `all` and `No-Support-for-Architecture-all: Packages` is absent,
    /// so apt 2.6 reads `binary-all` indexes; otherwise `binary-ARCH` indexes carry the
    /// `Architecture: all` packages.
    pub separate_arch_all: bool,
    /// Paths relative to the Release file's directory, such as `main/binary-amd64/Packages.xz`.
    pub sha256: BTreeMap<String, IndexFile>,
}

/// Verifies an `InRelease` file and parses the signed text.
///
/// `url` names the file in messages. `now` is checked against `Date` and `Valid-Until`.
pub fn verify_inrelease(
    data: &[u8],
    keyring: &Keyring,
    now: DateTime<Utc>,
    url: &str,
) -> Result<Release, ReleaseError> {
    let text = String::from_utf8_lossy(data);
    let (message, _) =
        CleartextSignedMessage::from_string(text.trim_start()).map_err(|source| {
            ReleaseError::Armor {
                url: url.to_owned(),
                source,
            }
        })?;
    let signed_text = message.signed_text();
    check_signatures(message.signatures(), signed_text.as_bytes(), keyring, url)?;
    // The signed text uses CRLF line endings, as OpenPGP hashes it.
    let release = parse_release(&signed_text.replace("\r\n", "\n"), url)?;
    check_dates(&release, now, url)?;
    Ok(release)
}

/// Verifies a `Release` file against its detached `Release.gpg` signature.
pub fn verify_detached(
    release: &[u8],
    signature: &[u8],
    keyring: &Keyring,
    now: DateTime<Utc>,
    url: &str,
) -> Result<Release, ReleaseError> {
    let armor_error = |source| ReleaseError::Armor {
        url: url.to_owned(),
        source,
    };
    let (signatures, _) =
        DetachedSignature::from_armor_many(Cursor::new(signature)).map_err(armor_error)?;
    let signatures: Vec<Signature> = signatures
        .map(|s| s.map(|s| s.signature))
        .collect::<Result<_, _>>()
        .map_err(armor_error)?;
    check_signatures(&signatures, release, keyring, url)?;
    let release = parse_release(&String::from_utf8_lossy(release), url)?;
    check_dates(&release, now, url)?;
    Ok(release)
}

fn issuer_ids(signature: &Signature) -> Vec<String> {
    let mut ids: Vec<String> = signature
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .collect();
    ids.extend(
        signature
            .issuer_key_id()
            .iter()
            .map(|k| hex::encode_upper(k.as_ref())),
    );
    ids
}

/// Tells whether `signature` names `key_id` or `fingerprint` as its issuer; a signature
/// that names no issuer could come from any key.
fn issued_by(signature: &Signature, key: &impl KeyDetails) -> bool {
    let fingerprints = signature.issuer_fingerprint();
    let key_ids = signature.issuer_key_id();
    if fingerprints.is_empty() && key_ids.is_empty() {
        return true;
    }
    let fingerprint = key.fingerprint();
    let key_id = key.legacy_key_id();
    fingerprints.iter().any(|f| **f == fingerprint) || key_ids.iter().any(|k| **k == key_id)
}

/// The outcome of checking one signature against a keyring.
enum Verdict {
    Good,
    Bad(String),
    Unknown,
}

fn check_signatures(
    signatures: &[Signature],
    data: &[u8],
    keyring: &Keyring,
    url: &str,
) -> Result<(), ReleaseError> {
    let mut good = false;
    let mut seen_ids = Vec::new();
    for signature in signatures {
        let ids = issuer_ids(signature);
        match check_signature(signature, data, keyring) {
            Verdict::Good => {
                tracing::debug!(url, key = ?ids, "good signature");
                good = true;
            }
            Verdict::Bad(key_id) => {
                return Err(ReleaseError::BadSignature {
                    url: url.to_owned(),
                    key_id,
                });
            }
            Verdict::Unknown => tracing::debug!(url, key = ?ids, "signature by an unknown key"),
        }
        seen_ids.extend(ids);
    }
    if good {
        return Ok(());
    }
    let mut keyrings = keyring.names().join(", ");
    if keyrings.is_empty() {
        keyrings.push_str("none");
    }
    Err(ReleaseError::NoKnownKey {
        url: url.to_owned(),
        key_ids: if seen_ids.is_empty() {
            "none".to_owned()
        } else {
            seen_ids.join(", ")
        },
        keyrings,
    })
}

fn check_signature(signature: &Signature, data: &[u8], keyring: &Keyring) -> Verdict {
    for key in &keyring.keys {
        if issued_by(signature, &key.primary_key) {
            let key_id = format!("{:X}", key.primary_key.fingerprint());
            return match signature.verify(&key.primary_key, data) {
                Ok(()) => Verdict::Good,
                Err(error) => {
                    tracing::debug!(key = %key_id, %error, "signature check failed");
                    Verdict::Bad(key_id)
                }
            };
        }
        for subkey in &key.public_subkeys {
            if !issued_by(signature, &subkey.key) {
                continue;
            }
            let key_id = format!("{:X}", subkey.key.fingerprint());
            if !subkey_can_sign(key, subkey) {
                tracing::debug!(key = %key_id, "subkey has no valid signing binding");
                continue;
            }
            return match signature.verify(&subkey.key, data) {
                Ok(()) => Verdict::Good,
                Err(error) => {
                    tracing::debug!(key = %key_id, %error, "signature check failed");
                    Verdict::Bad(key_id)
                }
            };
        }
    }
    Verdict::Unknown
}

/// Checks that a subkey is bound to its primary key for signing and not revoked.
fn subkey_can_sign(key: &SignedPublicKey, subkey: &pgp::composed::SignedPublicSubKey) -> bool {
    let revoked = subkey.signatures.iter().any(|sig| {
        sig.typ() == Some(SignatureType::SubkeyRevocation)
            && sig
                .verify_subkey_binding(&key.primary_key, &subkey.key)
                .is_ok()
    });
    if revoked {
        return false;
    }
    subkey.signatures.iter().any(|sig| {
        sig.typ() == Some(SignatureType::SubkeyBinding)
            && sig.key_flags().sign()
            && sig
                .verify_subkey_binding(&key.primary_key, &subkey.key)
                .is_ok()
            && sig.embedded_signature().is_some_and(|back| {
                back.verify_primary_key_binding(&subkey.key, &key.primary_key)
                    .is_ok()
            })
    })
}

fn check_dates(release: &Release, now: DateTime<Utc>, url: &str) -> Result<(), ReleaseError> {
    if let Some(valid_until) = release.valid_until
        && now > valid_until
    {
        return Err(ReleaseError::Expired {
            url: url.to_owned(),
            valid_until,
            now,
        });
    }
    if let Some(date) = release.date
        && date > now
    {
        return Err(ReleaseError::NotYetValid {
            url: url.to_owned(),
            date,
            now,
        });
    }
    Ok(())
}

/// Parses a Release date such as `Wed, 02 Dec 2026 23:13:43 UTC`.
fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(date) = DateTime::parse_from_rfc2822(text) {
        return Some(date.with_timezone(&Utc));
    }
    let trimmed = text.trim_end_matches(" UTC").trim_end_matches(" GMT");
    NaiveDateTime::parse_from_str(trimmed, "%a, %d %b %Y %H:%M:%S")
        .ok()
        .map(|naive| naive.and_utc())
}

/// Parses the text of a Release file, which must be trusted already.
pub fn parse_release(text: &str, url: &str) -> Result<Release, ReleaseError> {
    let invalid = |reason: String| ReleaseError::Invalid {
        url: url.to_owned(),
        reason,
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            // A Release file has one stanza; apt ignores anything after it.
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = fields.last_mut() else {
                return Err(invalid("continuation line before any field".to_owned()));
            };
            value.push('\n');
            value.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("line {line:?} is not a field")))?;
        fields.push((name.to_owned(), value.trim().to_owned()));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let words = |name: &str| -> Vec<String> {
        get(name)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let date = |name: &str| -> Result<Option<DateTime<Utc>>, ReleaseError> {
        get(name)
            .map(|text| parse_date(text).ok_or_else(|| invalid(format!("invalid {name} {text:?}"))))
            .transpose()
    };

    let sha256_text = get("SHA256").ok_or_else(|| ReleaseError::MissingSha256 {
        url: url.to_owned(),
    })?;
    let mut sha256 = BTreeMap::new();
    for line in sha256_text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(hash), Some(size), Some(path), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(format!("invalid SHA256 line {line:?}")));
        };
        let size = size
            .parse()
            .map_err(|_| invalid(format!("invalid size in SHA256 line {line:?}")))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("invalid hash in SHA256 line {line:?}")));
        }
        let file = IndexFile {
            size,
            sha256: hash.to_ascii_lowercase(),
        };
        sha256.insert(path.to_owned(), file);
    }
    if sha256.is_empty() {
        return Err(ReleaseError::MissingSha256 {
            url: url.to_owned(),
        });
    }

    Ok(Release {
        suite: get("Suite").map(str::to_owned),
        codename: get("Codename").map(str::to_owned),
        date: date("Date")?,
        valid_until: date("Valid-Until")?,
        architectures: words("Architectures"),
        components: words("Components"),
        acquire_by_hash: get("Acquire-By-Hash").is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        separate_arch_all: words("Architectures").iter().any(|a| a == "all")
            && get("No-Support-for-Architecture-all") != Some("Packages"),
        sha256,
    })
}

/// Formats a list of key IDs for messages.
pub fn describe_keys(keyring: &Keyring) -> String {
    let mut text = String::new();
    for key in &keyring.keys {
        let _ = write!(text, "{:X} ", key.primary_key.fingerprint());
    }
    text.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const INRELEASE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/apt/bookworm-security-InRelease"
    );
    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    fn debian_keyring() -> Keyring {
        Keyring::from_bytes(KEYRING, &fs_err::read(KEYRING).unwrap())
    }

    fn inrelease() -> Vec<u8> {
        fs_err::read(INRELEASE).unwrap()
    }

    /// Returns a time inside the stored file's validity: one hour after its `Date`.
    fn valid_now(data: &[u8]) -> DateTime<Utc> {
        let text = String::from_utf8_lossy(data);
        let line = text.lines().find(|l| l.starts_with("Date: ")).unwrap();
        parse_date(&line["Date: ".len()..]).unwrap() + chrono::Duration::hours(1)
    }

    fn gpgv_accepts(path: &std::path::Path) -> bool {
        Command::new("gpgv")
            .args(["--keyring", KEYRING])
            .arg(path)
            .output()
            .unwrap()
            .status
            .success()
    }

    #[test]
    fn keyring_loads_debian_keys() {
        let keyring = debian_keyring();
        assert!(keyring.len() >= 5, "{}", describe_keys(&keyring));
    }

    #[test]
    fn inrelease_verifies_and_parses() {
        let data = inrelease();
        assert!(gpgv_accepts(INRELEASE.as_ref()));
        let release = verify_inrelease(&data, &debian_keyring(), valid_now(&data), "test").unwrap();
        assert_eq!(release.codename.as_deref(), Some("bookworm-security"));
        assert!(release.acquire_by_hash);
        assert!(!release.separate_arch_all);
        assert!(release.architectures.iter().any(|a| a == "amd64"));
        assert!(release.valid_until.unwrap() > release.date.unwrap());
        let packages = &release.sha256["main/binary-amd64/Packages.xz"];
        assert!(packages.size > 0);
        assert_eq!(packages.sha256.len(), 64);
    }

    #[test]
    fn inrelease_expired() {
        let data = inrelease();
        let keyring = debian_keyring();
        let valid_until = verify_inrelease(&data, &keyring, valid_now(&data), "test")
            .unwrap()
            .valid_until
            .unwrap();
        let later = valid_until + chrono::Duration::seconds(1);
        let error =
            verify_inrelease(&data, &keyring, later, "http://m.invalid/InRelease").unwrap_err();
        assert!(matches!(error, ReleaseError::Expired { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(&valid_until.to_string()), "{message}");
        assert!(message.contains(&later.to_string()), "{message}");
    }

    #[test]
    fn inrelease_flipped_byte_is_bad() {
        let mut data = inrelease();
        let position = data.windows(9).position(|w| w == b"Codename:").unwrap() + 12;
        data[position] ^= 0x01;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("InRelease");
        fs_err::write(&path, &data).unwrap();
        assert!(!gpgv_accepts(&path));
        let error =
            verify_inrelease(&data, &debian_keyring(), valid_now(&inrelease()), "u").unwrap_err();
        assert!(
            matches!(error, ReleaseError::BadSignature { .. }),
            "{error}"
        );
    }

    #[test]
    fn inrelease_empty_keyring_names_keys() {
        let data = inrelease();
        let empty = Keyring::from_bytes("/tmp/empty.gpg", b"");
        let error = verify_inrelease(&data, &empty, valid_now(&data), "u").unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ReleaseError::NoKnownKey { .. }),
            "{message}"
        );
        assert!(
            message.contains("B0CAB9266E8C3929798B3EEEBDE6D2B9216EC7A8"),
            "{message}"
        );
        assert!(message.contains("/tmp/empty.gpg"), "{message}");
        assert!(message.contains("--keyring"), "{message}");
    }

    #[test]
    fn text_outside_signed_block_is_rejected() {
        let mut data = b"Codename: evil\n\n".to_vec();
        data.extend(inrelease());
        let result = verify_inrelease(&data, &debian_keyring(), valid_now(&inrelease()), "u");
        assert!(result.is_err());
    }

    #[test]
    fn release_without_sha256() {
        let error = parse_release("Suite: x\nMD5Sum:\n 00 1 a\n", "u").unwrap_err();
        assert!(matches!(error, ReleaseError::MissingSha256 { .. }));
    }

    #[test]
    fn release_dates_parse() {
        let date = parse_date("Wed, 02 Dec 2026 23:13:43 UTC").unwrap();
        assert_eq!(date.to_rfc3339(), "2026-12-02T23:13:43+00:00");
        assert!(parse_date("Sat, 10 Jun 2023 08:55:33 +0000").is_some());
    }
}
