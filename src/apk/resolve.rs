//! Choosing the packages an apk upgrade installs: the newest version at least the fixed
//! one, closed over `D:` dependencies (package names and `so:`, `cmd:`, `pc:` provides).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::index::IndexEntry;
use super::installed::InstalledDb;
use super::version;

/// An error while resolving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{package}: no repository has a version >= {fixed} (installed: {installed}, newest \
         available: {})\n\
         hint: check the image's /etc/apk/repositories or --repo-mirror",
        newest.as_deref().unwrap_or("none")
    )]
    NoFixedVersion {
        package: String,
        fixed: String,
        installed: String,
        /// The newest version of the package in any repository, if there is one.
        newest: Option<String>,
    },
    #[error(
        "{package} {version} depends on {dependency}, which no repository or installed package provides"
    )]
    Unsatisfied {
        package: String,
        version: String,
        dependency: String,
    },
}

/// A package the report requests an update of; `fixed` is `None` for "the newest".
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub fixed: Option<String>,
}

/// The reason a request needs no install.
#[derive(Debug, Clone)]
pub enum SkipReason {
    AlreadyFixed { installed: String },
    NotInstalled,
}

/// One package to install.
#[derive(Debug, Clone)]
pub struct Install {
    pub name: String,
    pub old_version: Option<String>,
    pub entry: IndexEntry,
    /// Index of the repository the entry comes from, in the caller's list.
    pub repository: usize,
    /// `requested`, or `dependency of NAME`.
    pub reason: String,
}

/// The resolved plan.
#[derive(Debug, Default)]
pub struct Plan {
    pub installs: Vec<Install>,
    pub skipped: Vec<(Request, SkipReason)>,
    pub failures: Vec<ResolveError>,
}

/// A parsed dependency: `[!]name[op version]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub constraint: Option<(String, String)>,
    pub conflict: bool,
}

impl Dependency {
    /// Parses one word of a `D:` field.
    pub fn parse(word: &str) -> Dependency {
        let (conflict, word) = match word.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, word),
        };
        match word.find(['<', '>', '=', '~']) {
            Some(at) => {
                let op_len = word[at..]
                    .chars()
                    .take_while(|c| matches!(c, '<' | '>' | '=' | '~'))
                    .count();
                Dependency {
                    name: word[..at].to_owned(),
                    constraint: Some((
                        word[at..at + op_len].to_owned(),
                        word[at + op_len..].to_owned(),
                    )),
                    conflict,
                }
            }
            None => Dependency {
                name: word.to_owned(),
                constraint: None,
                conflict,
            },
        }
    }

    /// Whether a provider of this name at `provided` (None: unversioned) satisfies it.
    pub fn matches(&self, provided: Option<&str>) -> bool {
        let Some((op, wanted)) = &self.constraint else {
            return true;
        };
        let Some(provided) = provided else {
            return false;
        };
        let order = version::compare(provided, wanted);
        match op.as_str() {
            "=" => order == Ordering::Equal,
            ">=" => order != Ordering::Less,
            "<=" => order != Ordering::Greater,
            ">" => order == Ordering::Greater,
            "<" => order == Ordering::Less,
            // `~` matches versions that start with the wanted one (apk's fuzzy match).
            "~" | "=~" | "~=" => provided.starts_with(wanted.as_str()),
            _ => false,
        }
    }
}

/// What a package offers: its own name at its version, and each `p:` provide.
fn offers<'a>(
    name: &'a str,
    version: &'a str,
    provides: Vec<&'a str>,
) -> Vec<(&'a str, Option<&'a str>)> {
    let mut out = vec![(name, Some(version))];
    for word in provides {
        match word.split_once('=') {
            Some((n, v)) => out.push((n, Some(v))),
            None => out.push((word, None)),
        }
    }
    out
}

/// Resolves `requests` against the installed database and the repositories' entries
/// (`(repository index, entry)`). With `ignore_errors`, requests that cannot be met go
/// to [`Plan::failures`] instead of failing the whole resolve.
pub fn resolve(
    installed: &InstalledDb,
    requests: &[Request],
    available: &[(usize, IndexEntry)],
    ignore_errors: bool,
) -> Result<Plan, ResolveError> {
    let mut plan = Plan::default();
    let mut chosen: BTreeMap<String, Install> = BTreeMap::new();
    for request in requests {
        let Some(current) = installed.package(&request.name) else {
            plan.skipped
                .push((request.clone(), SkipReason::NotInstalled));
            continue;
        };
        let installed_version = current.version();
        if let Some(fixed) = &request.fixed
            && version::compare(installed_version, fixed) != Ordering::Less
        {
            plan.skipped.push((
                request.clone(),
                SkipReason::AlreadyFixed {
                    installed: installed_version.to_owned(),
                },
            ));
            continue;
        }
        let floor = request.fixed.as_deref().unwrap_or(installed_version);
        let best = newest(available, |entry| {
            entry.name() == request.name
                && version::compare(entry.version(), floor) != Ordering::Less
                && version::compare(entry.version(), installed_version) == Ordering::Greater
        });
        match best {
            Some((repository, entry)) => {
                chosen.insert(
                    request.name.clone(),
                    Install {
                        name: request.name.clone(),
                        old_version: Some(installed_version.to_owned()),
                        entry: entry.clone(),
                        repository,
                        reason: "requested".to_owned(),
                    },
                );
            }
            None => {
                let error = ResolveError::NoFixedVersion {
                    package: request.name.clone(),
                    fixed: floor.to_owned(),
                    installed: installed_version.to_owned(),
                    newest: newest(available, |entry| entry.name() == request.name)
                        .map(|(_, entry)| entry.version().to_owned()),
                };
                if !ignore_errors {
                    return Err(error);
                }
                plan.failures.push(error);
            }
        }
    }

    // Closes over dependencies until every D: of a chosen package and of every installed
    // package is met by the new set. apk-tools upgrades an installed package whose
    // pinned dependency (`libcrypto3=VERSION`) the plan would break, so this does too.
    loop {
        let mut added = false;
        let mut owners: Vec<(String, String, Vec<String>)> = chosen
            .values()
            .map(|i| {
                (
                    i.name.clone(),
                    i.entry.version().to_owned(),
                    i.entry.words('D').iter().map(|w| (*w).to_owned()).collect(),
                )
            })
            .collect();
        for package in &installed.packages {
            if !chosen.contains_key(package.name()) {
                owners.push((
                    package.name().to_owned(),
                    package.version().to_owned(),
                    package.words('D').iter().map(|w| (*w).to_owned()).collect(),
                ));
            }
        }
        for (owner, owner_version, depends) in owners {
            for word in depends {
                let dependency = Dependency::parse(&word);
                if dependency.conflict || satisfied(&dependency, installed, &chosen) {
                    continue;
                }
                let provider = newest(available, |entry| {
                    offers(entry.name(), entry.version(), entry.words('p'))
                        .iter()
                        .any(|(n, v)| *n == dependency.name && dependency.matches(*v))
                });
                let installed_owner = !chosen.contains_key(&owner);
                // An installed package whose dependency breaks is upgraded itself when
                // a newer version of it exists; otherwise its dependency is pulled in.
                let self_upgrade = installed_owner
                    .then(|| {
                        newest(available, |entry| {
                            entry.name() == owner
                                && version::compare(entry.version(), &owner_version)
                                    == Ordering::Greater
                        })
                    })
                    .flatten();
                let (repository, entry, reason) = match (self_upgrade, provider) {
                    (Some((r, e)), _) => (r, e, "keeps dependencies consistent".to_owned()),
                    (None, Some((r, e))) => (r, e, format!("dependency of {owner}")),
                    (None, None) => {
                        return Err(ResolveError::Unsatisfied {
                            package: owner,
                            version: owner_version,
                            dependency: word,
                        });
                    }
                };
                let name = entry.name().to_owned();
                if chosen.contains_key(&name) {
                    continue;
                }
                chosen.insert(
                    name.clone(),
                    Install {
                        old_version: installed.package(&name).map(|p| p.version().to_owned()),
                        name,
                        entry: entry.clone(),
                        repository,
                        reason,
                    },
                );
                added = true;
                break;
            }
            if added {
                break;
            }
        }
        if !added {
            break;
        }
    }
    // Name order, so the layer and the output do not depend on hash or request order.
    plan.installs = chosen.into_values().collect();
    Ok(plan)
}

fn satisfied(
    dependency: &Dependency,
    installed: &InstalledDb,
    chosen: &BTreeMap<String, Install>,
) -> bool {
    let chosen_match = chosen.values().any(|install| {
        offers(
            install.entry.name(),
            install.entry.version(),
            install.entry.words('p'),
        )
        .iter()
        .any(|(n, v)| *n == dependency.name && dependency.matches(*v))
    });
    chosen_match
        || installed.packages.iter().any(|package| {
            !chosen.contains_key(package.name())
                && offers(package.name(), package.version(), package.words('p'))
                    .iter()
                    .any(|(n, v)| *n == dependency.name && dependency.matches(*v))
        })
}

fn newest(
    available: &[(usize, IndexEntry)],
    accept: impl Fn(&IndexEntry) -> bool,
) -> Option<(usize, &IndexEntry)> {
    let mut best: Option<(usize, &IndexEntry)> = None;
    for (repository, entry) in available {
        if !accept(entry) {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, current)) => {
                version::compare(entry.version(), current.version()) == Ordering::Greater
            }
        };
        if better {
            best = Some((*repository, entry));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apk::installed::Field;

    fn entry(lines: &[(char, &str)]) -> IndexEntry {
        IndexEntry {
            fields: lines
                .iter()
                .map(|(k, v)| Field {
                    key: *k,
                    value: (*v).to_owned(),
                })
                .collect(),
        }
    }

    const INSTALLED: &str = "P:libcrypto3\nV:3.5.8-r0\np:so:libcrypto.so.3=3\n\n\
        P:libssl3\nV:3.5.8-r0\nD:libcrypto3=3.5.8-r0 so:libcrypto.so.3\n\n\
        P:zlib\nV:1.3.2-r0\n\n";

    #[test]
    fn pinned_dependency_pulls_the_pinned_version() {
        let installed = InstalledDb::parse(INSTALLED.as_bytes()).unwrap();
        let available = vec![
            (
                0,
                entry(&[
                    ('P', "libcrypto3"),
                    ('V', "3.5.8-r1"),
                    ('p', "so:libcrypto.so.3=3"),
                ]),
            ),
            (
                0,
                entry(&[
                    ('P', "libssl3"),
                    ('V', "3.5.8-r1"),
                    ('D', "libcrypto3=3.5.8-r1 so:libcrypto.so.3"),
                ]),
            ),
        ];
        let requests = [Request {
            name: "libssl3".to_owned(),
            fixed: Some("3.5.8-r1".to_owned()),
        }];
        let plan = resolve(&installed, &requests, &available, false).unwrap();
        let names: Vec<&str> = plan.installs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["libcrypto3", "libssl3"]);
    }

    #[test]
    fn upgrading_a_pinned_library_upgrades_its_user() {
        let installed = InstalledDb::parse(INSTALLED.as_bytes()).unwrap();
        let available = vec![
            (0, entry(&[('P', "libcrypto3"), ('V', "3.5.8-r1")])),
            (
                0,
                entry(&[
                    ('P', "libssl3"),
                    ('V', "3.5.8-r1"),
                    ('D', "libcrypto3=3.5.8-r1"),
                ]),
            ),
        ];
        let requests = [Request {
            name: "libcrypto3".to_owned(),
            fixed: Some("3.5.8-r1".to_owned()),
        }];
        let plan = resolve(&installed, &requests, &available, false).unwrap();
        assert_eq!(plan.installs.len(), 2);
    }

    #[test]
    fn missing_fixed_version_is_an_error() {
        let installed = InstalledDb::parse(INSTALLED.as_bytes()).unwrap();
        let requests = [Request {
            name: "zlib".to_owned(),
            fixed: Some("1.3.3-r0".to_owned()),
        }];
        let error = resolve(&installed, &requests, &[], false).unwrap_err();
        assert!(
            matches!(error, ResolveError::NoFixedVersion { .. }),
            "{error}"
        );
        let plan = resolve(&installed, &requests, &[], true).unwrap();
        assert_eq!(plan.failures.len(), 1);
    }

    #[test]
    fn already_fixed_and_missing_are_skipped() {
        let installed = InstalledDb::parse(INSTALLED.as_bytes()).unwrap();
        let requests = [
            Request {
                name: "zlib".to_owned(),
                fixed: Some("1.3.1-r0".to_owned()),
            },
            Request {
                name: "busybox".to_owned(),
                fixed: None,
            },
        ];
        let plan = resolve(&installed, &requests, &[], false).unwrap();
        assert!(plan.installs.is_empty());
        assert_eq!(plan.skipped.len(), 2);
    }

    #[test]
    fn dependency_words_parse() {
        let d = Dependency::parse("so:libc.musl-x86_64.so.1");
        assert_eq!(d.name, "so:libc.musl-x86_64.so.1");
        assert!(d.constraint.is_none());
        let d = Dependency::parse("musl>=1.2.3_git20230424");
        assert_eq!(
            d.constraint,
            Some((">=".to_owned(), "1.2.3_git20230424".to_owned()))
        );
        assert!(Dependency::parse("!foo").conflict);
    }
}
