//! Package version comparison as apk-tools 3 defines it.
//!
//! A version is `digits{.digits}[letter]{_suffix[digits]}[~hexhash][-rN]`. The rules
//! below follow apk-tools 3.0 (`src/version.c`): numeric components compare as
//! numbers unless either side has a leading zero (then as strings); suffixes rank
//! `_alpha < _beta < _pre < _rc < (none) < _cvs < _svn < _git < _hg < _p`; when one
//! version runs out first, the longer one is newer unless it goes on with a pre-release
//! suffix.

use std::cmp::Ordering;

/// The kind of a version token. The order matters: a token may only follow one of a
/// lower kind, and when one version ends early the kinds decide the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TokenKind {
    InitialDigit,
    Digit,
    Letter,
    Suffix,
    SuffixNumber,
    CommitHash,
    Revision,
    End,
    Invalid,
}

/// Suffix ranks; `NONE` is the rank of a version without a suffix.
const SUFFIX_NONE: u8 = 5;
const SUFFIXES: [(&str, u8); 9] = [
    ("alpha", 1),
    ("beta", 2),
    ("pre", 3),
    ("rc", 4),
    ("cvs", 6),
    ("svn", 7),
    ("git", 8),
    ("hg", 9),
    ("p", 10),
];

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: TokenKind,
    text: &'a [u8],
    number: u64,
    suffix: u8,
}

/// Splits a version into tokens, one call of [`Tokens::advance`] at a time.
struct Tokens<'a> {
    rest: &'a [u8],
    current: Token<'a>,
}

impl<'a> Tokens<'a> {
    fn new(version: &'a str) -> Self {
        let mut tokens = Tokens {
            rest: version.as_bytes(),
            current: Token {
                kind: TokenKind::InitialDigit,
                text: &[],
                number: 0,
                suffix: 0,
            },
        };
        tokens.take_digits();
        tokens
    }

    /// Reads a run of digits into the current token. apk-tools accumulates the number
    /// in a wrapping `uint64_t`, so very long runs wrap the same way here.
    fn take_digits(&mut self) {
        let len = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, rest) = self.rest.split_at(len);
        self.current.text = digits;
        self.current.number = digits.iter().fold(0u64, |n, d| {
            n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        self.rest = rest;
        if len == 0 {
            self.current.kind = TokenKind::Invalid;
        }
    }

    fn advance(&mut self) {
        use TokenKind::*;
        let previous = self.current.kind;
        let Some(&first) = self.rest.first() else {
            self.current.kind = End;
            return;
        };
        match first {
            b'a'..=b'z' if previous <= Digit => {
                self.current.text = &self.rest[..1];
                self.current.kind = Letter;
                self.rest = &self.rest[1..];
            }
            b'.' | b'0'..=b'9' => {
                if first == b'.' {
                    if previous > Digit {
                        self.current.kind = Invalid;
                        return;
                    }
                    self.rest = &self.rest[1..];
                }
                self.current.kind = match previous {
                    InitialDigit | Digit => Digit,
                    Suffix => SuffixNumber,
                    _ => {
                        self.current.kind = Invalid;
                        return;
                    }
                };
                self.take_digits();
            }
            b'_' if previous <= SuffixNumber => {
                let word_len = self.rest[1..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase())
                    .count();
                let word = &self.rest[1..1 + word_len];
                self.rest = &self.rest[1 + word_len..];
                self.current.text = word;
                match SUFFIXES.iter().find(|(name, _)| name.as_bytes() == word) {
                    Some((_, rank)) => {
                        self.current.suffix = *rank;
                        self.current.kind = Suffix;
                    }
                    None => self.current.kind = Invalid,
                }
            }
            b'~' if previous < CommitHash => {
                let len = self.rest[1..]
                    .iter()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
                self.current.text = &self.rest[1..1 + len];
                self.rest = &self.rest[1 + len..];
                self.current.kind = if len == 0 { Invalid } else { CommitHash };
            }
            b'-' if previous < Revision && self.rest.starts_with(b"-r") => {
                self.rest = &self.rest[2..];
                self.current.kind = Revision;
                self.take_digits();
            }
            _ => self.current.kind = Invalid,
        }
    }
}

/// Compares two tokens of the same kind.
fn compare_tokens(a: &Token<'_>, b: &Token<'_>) -> Ordering {
    match a.kind {
        // A component with a leading zero compares as a string, as in Gentoo's rules.
        TokenKind::Digit if a.text.first() == Some(&b'0') || b.text.first() == Some(&b'0') => {
            a.text.cmp(b.text)
        }
        TokenKind::Digit
        | TokenKind::InitialDigit
        | TokenKind::SuffixNumber
        | TokenKind::Revision => a.number.cmp(&b.number),
        TokenKind::Letter => a.text.cmp(b.text),
        TokenKind::Suffix => a.suffix.cmp(&b.suffix),
        _ => a.text.cmp(b.text),
    }
}

/// Returns whether `version` is a valid apk version (what `apk version -c` accepts).
pub fn is_valid(version: &str) -> bool {
    let mut tokens = Tokens::new(version);
    while tokens.current.kind < TokenKind::End {
        tokens.advance();
    }
    tokens.current.kind == TokenKind::End
}

/// Compares two versions the way apk-tools 3 does. Invalid versions still get an order
/// (apk compares them token by token up to the first invalid token), but callers should
/// check [`is_valid`] first, as `apk version -t` does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let mut ta = Tokens::new(a);
    let mut tb = Tokens::new(b);
    while ta.current.kind == tb.current.kind && ta.current.kind < TokenKind::End {
        let order = compare_tokens(&ta.current, &tb.current);
        if order != Ordering::Equal {
            return order;
        }
        ta.advance();
        tb.advance();
    }
    let (ka, kb) = (ta.current.kind, tb.current.kind);
    if ka == kb {
        return Ordering::Equal;
    }
    // The common prefix is equal, so the longer version is newer unless what follows
    // is a pre-release suffix.
    if ka == TokenKind::Suffix && ta.current.suffix < SUFFIX_NONE {
        return Ordering::Less;
    }
    if kb == TokenKind::Suffix && tb.current.suffix < SUFFIX_NONE {
        return Ordering::Greater;
    }
    kb.cmp(&ka)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::io::Write as _;

    use super::*;

    #[test]
    fn documented_orders_hold() {
        let less = [
            ("1.0_alpha", "1.0_beta"),
            ("1.0_beta2", "1.0_pre1"),
            ("1.0_pre1", "1.0_rc1"),
            ("1.0_rc1", "1.0"),
            ("1.0", "1.0_p1"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0b"),
            ("1.0-r1", "1.0-r10"),
            ("1.0", "1.0-r1"),
            ("1.01", "1.1"),
            ("1.2", "1.10"),
            ("8.2.0015", "8.2.002"),
        ];
        for (a, b) in less {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare("1.0-r1", "1.0-r01"), Ordering::Equal);
    }

    #[test]
    fn invalid_versions_are_detected() {
        for version in [
            "", "abc", "1.2a3", "1.0_foo", "1.0-1", "1.0~", "1..0", "1.0-r",
        ] {
            assert!(!is_valid(version), "{version:?} must be invalid");
        }
        for version in [
            "1",
            "1.2.3a_rc1_p2~abc1-r3",
            "20260909-r0",
            "6.5_p20251123-r0",
        ] {
            assert!(is_valid(version), "{version:?} must be valid");
        }
    }

    /// Small deterministic generator, so a failure names a reproducible pair.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    fn generate_version(rng: &mut Lcg) -> String {
        let mut version = String::new();
        let numbers = ["0", "1", "2", "01", "10", "001", "9", "100", "02"];
        let parts = 1 + rng.next(3);
        for i in 0..parts {
            if i > 0 {
                version.push('.');
            }
            version.push_str(numbers[rng.next(numbers.len() as u64) as usize]);
        }
        if rng.next(4) == 0 {
            version.push(
                ["a", "b", "z"][rng.next(3) as usize]
                    .chars()
                    .next()
                    .unwrap(),
            );
        }
        let suffixes = ["alpha", "beta", "pre", "rc", "cvs", "svn", "git", "hg", "p"];
        for _ in 0..rng.next(3) {
            version.push('_');
            version.push_str(suffixes[rng.next(suffixes.len() as u64) as usize]);
            if rng.next(2) == 0 {
                let _ = write!(version, "{}", rng.next(12));
            }
        }
        if rng.next(8) == 0 {
            version.push_str(["~ab12", "~0f", "~c"][rng.next(3) as usize]);
        }
        if rng.next(2) == 0 {
            let _ = write!(version, "-r{}", rng.next(12));
        }
        // A few invalid forms, so validation is compared too.
        if rng.next(40) == 0 {
            version.push_str(["-1", "_foo", "x1", ".", "-r"][rng.next(5) as usize]);
        }
        version
    }

    /// Compares 4000 generated pairs with `apk version -t` of apk-tools 3.0.8, run in a
    /// chroot of the real Alpine 3.23 rootfs in one shell loop.
    #[test]
    fn comparison_matches_real_apk() {
        let rootfs = super::super::test_support::alpine_rootfs();
        let mut rng = Lcg(0x5eed);
        let mut pairs = Vec::new();
        for _ in 0..4000 {
            let a = generate_version(&mut rng);
            let b = if rng.next(5) == 0 {
                a.clone()
            } else if rng.next(3) == 0 {
                // Near pairs share a prefix, so later tokens decide.
                let mut b = a.clone();
                b.push_str(["_rc1", "a", ".0", "-r1", "_p"][rng.next(5) as usize]);
                b
            } else {
                generate_version(&mut rng)
            };
            pairs.push((a, b));
        }
        let work = tempfile::Builder::new()
            .prefix("apk-version-")
            .tempdir_in(rootfs.join("tmp"))
            .unwrap();
        let mut input = fs_err::File::create(work.path().join("pairs")).unwrap();
        for (a, b) in &pairs {
            writeln!(input, "{a} {b}").unwrap();
        }
        drop(input);
        let inside = format!(
            "/tmp/{}",
            work.path().file_name().unwrap().to_string_lossy()
        );
        let script = format!(
            "while read -r a b; do r=$(/sbin/apk version -t \"$a\" \"$b\" 2>/dev/null); \
             echo \"${{r:-invalid}}\"; done < {inside}/pairs"
        );
        let output = std::process::Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/sh", "-c", &script])
            .output()
            .expect("chroot must run (the test needs root)");
        assert!(output.status.success(), "{output:?}");
        let answers = String::from_utf8(output.stdout).unwrap();
        let answers: Vec<&str> = answers.lines().collect();
        assert_eq!(answers.len(), pairs.len());
        let mut mismatches = Vec::new();
        for ((a, b), real) in pairs.iter().zip(&answers) {
            let ours = if !is_valid(a) || !is_valid(b) {
                "invalid"
            } else {
                match compare(a, b) {
                    Ordering::Less => "<",
                    Ordering::Equal => "=",
                    Ordering::Greater => ">",
                }
            };
            if ours != *real {
                mismatches.push(format!("{a} {b}: apk {real}, ours {ours}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}
