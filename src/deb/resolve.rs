//! Choosing which package versions to install so that requested fixes land and the
//! dpkg database stays consistent.
//!
//! The resolver simulates the installed set after the update and repeats four checks
//! until nothing changes. Every Depends and Pre-Depends of a changed package must be
//! satisfied, and no package may Break another. Installed packages whose dependencies the
//! update broke are updated too. `Multi-Arch: same` packages keep one version across
//! architectures. The resolver only upgrades or adds packages and never removes one.
//!
//! NOTE: it repairs one inconsistency at a time and takes the first alternative that has
//! a candidate, without backtracking, so some solvable conflicts end in an error.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use debversion::Version;

use super::packages::{
    MultiArch, Op, PackagesError, Relation, Relations, compare_versions, format_relations,
};
use super::repo::{Candidate, RepoIndex};

/// A package as the dpkg status file records it.
#[derive(Debug, Clone)]
pub struct InstalledPackage {
    pub name: String,
    pub arch: String,
    pub version: Version,
    pub multi_arch: MultiArch,
    pub source: String,
    pub source_version: Version,
    pub depends: Relations,
    pub pre_depends: Relations,
    pub breaks: Relations,
    pub provides: Vec<Relation>,
    /// `Status: install ok installed`; other states do not satisfy dependencies.
    pub status_ok: bool,
    /// Marked `hold`: the resolver never changes it.
    pub hold: bool,
}

/// A request to bring a package to a fixed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    /// Only this architecture; `None` means every installed architecture.
    pub arch: Option<String>,
    /// The minimum version; `None` means the newest available.
    pub fixed: Option<Version>,
}

/// Settings of [`resolve`].
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// The image's native dpkg architecture, such as `amd64`.
    pub arch: String,
    /// Record per-package failures in [`Plan::failures`] and go on with the rest.
    pub ignore_errors: bool,
}

/// The cause that put a package in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Requested,
    /// A new version of `of` depends on this version.
    Dependency {
        of: String,
    },
    /// A new version of `by` breaks the installed version, or the installed version
    /// breaks the new version of `by`.
    Breaks {
        by: String,
    },
    /// The installed version depends on the old version of `of`, such as an `=` pin
    /// between binary packages of one source.
    ReverseDependency {
        of: String,
    },
    /// `Multi-Arch: same` instances must share one version with `of`.
    MultiArchSame {
        of: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Requested => f.write_str("requested"),
            Reason::Dependency { of } => write!(f, "dependency of {of}"),
            Reason::Breaks { by } => write!(f, "breaks relation with {by}"),
            Reason::ReverseDependency { of } => write!(f, "depends on updated {of}"),
            Reason::MultiArchSame { of } => write!(f, "same version as {of}"),
        }
    }
}

/// One package to install.
#[derive(Debug, Clone)]
pub struct PlannedInstall {
    pub name: String,
    pub arch: String,
    /// The installed version; `None` for a package new to the image.
    pub old_version: Option<Version>,
    pub candidate: Arc<Candidate>,
    pub reason: Reason,
}

impl PlannedInstall {
    pub fn new_version(&self) -> &Version {
        &self.candidate.entry.version
    }

    pub fn is_new(&self) -> bool {
        self.old_version.is_none()
    }
}

/// The cause that makes a request need no change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The installed version already meets the request.
    AlreadyFixed { installed: Version },
    /// The package is not installed, so there is nothing to fix.
    NotInstalled,
    /// The package is on hold.
    Held { installed: Version },
}

#[derive(Debug, Clone)]
pub struct Skipped {
    pub request: Request,
    pub arch: Option<String>,
    pub reason: SkipReason,
}

/// The outcome of [`resolve`]: installs in dpkg order (Pre-Depends first).
#[derive(Debug, Default)]
pub struct Plan {
    pub installs: Vec<PlannedInstall>,
    pub skipped: Vec<Skipped>,
    /// Requests that failed, with `ignore_errors`.
    pub failures: Vec<ResolveError>,
}

/// A reason no consistent plan exists.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no version of {package} >= {wanted} is available (newest: {})\n\
         hint: check that the image's apt sources include the security suite",
        newest.as_ref().map_or_else(|| "none".to_owned(), Version::to_string)
    )]
    NoFixedVersion {
        package: String,
        wanted: String,
        newest: Option<Version>,
    },
    #[error("{package} {version} depends on {dependency}, which no available version satisfies")]
    Unsatisfiable {
        package: String,
        version: Version,
        dependency: String,
    },
    /// `package` and `other` include their versions.
    #[error("{package} conflicts with {other} ({relation}) and no available version resolves it")]
    Conflict {
        package: String,
        other: String,
        relation: String,
    },
    #[error("{package} is on hold but must change for {by}\nhint: release the hold in the image")]
    Held { package: String, by: String },
    /// `package` includes its version.
    #[error("invalid relationship field of {package}")]
    Relation {
        package: String,
        #[source]
        source: PackagesError,
    },
    #[error("the resolver did not settle after {passes} passes")]
    NoConvergence { passes: usize },
}

/// A new version chosen for a node, with its relations parsed once.
#[derive(Debug, Clone)]
struct Planned {
    candidate: Arc<Candidate>,
    multi_arch: MultiArch,
    depends: Relations,
    pre_depends: Relations,
    breaks: Relations,
    provides: Vec<Relation>,
    reason: Reason,
    /// The request this change serves, so a failed request can be undone with `ignore_errors`.
    root: String,
}

/// A package in the simulated installed set: installed, planned, or both.
#[derive(Debug)]
struct Node<'a> {
    name: String,
    arch: String,
    installed: Option<&'a InstalledPackage>,
    planned: Option<Planned>,
}

impl Node<'_> {
    fn present(&self) -> bool {
        self.installed.is_some() || self.planned.is_some()
    }

    fn version(&self) -> &Version {
        match (&self.planned, self.installed) {
            (Some(planned), _) => &planned.candidate.entry.version,
            (None, Some(installed)) => &installed.version,
            (None, None) => unreachable!("absent nodes have no version"),
        }
    }

    fn multi_arch(&self) -> MultiArch {
        match (&self.planned, self.installed) {
            (Some(planned), _) => planned.multi_arch,
            (None, Some(installed)) => installed.multi_arch,
            _ => MultiArch::No,
        }
    }

    fn depends_groups(&self) -> Vec<&Vec<Relation>> {
        match (&self.planned, self.installed) {
            (Some(p), _) => p.pre_depends.iter().chain(&p.depends).collect(),
            (None, Some(i)) => i.pre_depends.iter().chain(&i.depends).collect(),
            _ => Vec::new(),
        }
    }

    fn breaks(&self) -> &[Vec<Relation>] {
        match (&self.planned, self.installed) {
            (Some(p), _) => &p.breaks,
            (None, Some(i)) => &i.breaks,
            _ => &[],
        }
    }

    fn provides(&self) -> &[Relation] {
        match (&self.planned, self.installed) {
            (Some(p), _) => &p.provides,
            (None, Some(i)) => &i.provides,
            _ => &[],
        }
    }

    fn held(&self) -> bool {
        self.installed.is_some_and(|i| i.hold)
    }

    fn label(&self) -> String {
        format!("{}:{}", self.name, self.arch)
    }
}

struct Resolver<'a> {
    nodes: Vec<Node<'a>>,
    index: &'a RepoIndex,
    native: String,
    /// Dependency groups already unsatisfied before the update, by node and group text.
    baseline_unsatisfied: BTreeSet<(usize, String)>,
    /// Breaks relations already in effect before the update.
    baseline_breaks: BTreeSet<(usize, usize)>,
}

/// One repair the resolver decided on during a pass.
enum Step {
    Plan {
        /// `None` plans a package that is not installed yet.
        node: Option<usize>,
        candidate: Arc<Candidate>,
        reason: Reason,
        root: String,
    },
    Fail {
        root: String,
        error: ResolveError,
    },
}

/// Chooses the installs that bring `requests` to their fixed versions.
pub fn resolve(
    installed: &[InstalledPackage],
    requests: &[Request],
    index: &RepoIndex,
    options: &ResolveOptions,
) -> Result<Plan, ResolveError> {
    let mut resolver = Resolver::new(installed, index, &options.arch);
    let mut plan = Plan::default();

    for request in requests {
        let matching: Vec<usize> = (0..resolver.nodes.len())
            .filter(|&i| {
                let node = &resolver.nodes[i];
                node.name == request.name
                    && node.installed.is_some()
                    && request.arch.as_ref().is_none_or(|a| *a == node.arch)
            })
            .collect();
        if matching.is_empty() {
            tracing::debug!(package = %request.name, "requested package is not installed");
            plan.skipped.push(Skipped {
                request: request.clone(),
                arch: request.arch.clone(),
                reason: SkipReason::NotInstalled,
            });
            continue;
        }
        for node_index in matching {
            match resolver.plan_request(node_index, request) {
                Ok(Some(reason)) => plan.skipped.push(Skipped {
                    request: request.clone(),
                    arch: Some(resolver.nodes[node_index].arch.clone()),
                    reason,
                }),
                Ok(None) => {}
                Err(error) if options.ignore_errors => plan.failures.push(error),
                Err(error) => return Err(error),
            }
        }
    }

    const MAX_PASSES: usize = 100;
    let mut passes = 0;
    loop {
        passes += 1;
        if passes > MAX_PASSES {
            return Err(ResolveError::NoConvergence { passes: MAX_PASSES });
        }
        let Some(step) = resolver.next_step() else {
            break;
        };
        match step {
            Step::Plan {
                node,
                candidate,
                reason,
                root,
            } => {
                let node = node.unwrap_or_else(|| resolver.add_node(&candidate));
                resolver.set_planned(node, candidate, reason, root)?;
            }
            Step::Fail { root, error } => {
                if !options.ignore_errors {
                    return Err(error);
                }
                tracing::debug!(request = %root, %error, "dropping a request that cannot be resolved");
                resolver.undo_root(&root);
                plan.failures.push(error);
            }
        }
    }

    plan.installs = resolver.into_ordered_installs();
    Ok(plan)
}

impl<'a> Resolver<'a> {
    fn new(installed: &'a [InstalledPackage], index: &'a RepoIndex, native: &str) -> Self {
        let nodes = installed
            .iter()
            .filter(|p| p.status_ok)
            .map(|p| Node {
                name: p.name.clone(),
                arch: p.arch.clone(),
                installed: Some(p),
                planned: None,
            })
            .collect();
        let mut resolver = Resolver {
            nodes,
            index,
            native: native.to_owned(),
            baseline_unsatisfied: BTreeSet::new(),
            baseline_breaks: BTreeSet::new(),
        };
        for node in 0..resolver.nodes.len() {
            for group in resolver.unsatisfied_groups(node) {
                resolver
                    .baseline_unsatisfied
                    .insert((node, format_relations(std::slice::from_ref(&group))));
            }
            for (other, _) in resolver.broken_by(node) {
                resolver.baseline_breaks.insert((node, other));
            }
        }
        resolver
    }

    /// Returns the architecture to look `arch` up in the index: `all` maps to the native one.
    fn lookup_arch(&self, arch: &str) -> String {
        if arch == "all" {
            self.native.clone()
        } else {
            arch.to_owned()
        }
    }

    fn plan_request(
        &mut self,
        node_index: usize,
        request: &Request,
    ) -> Result<Option<SkipReason>, ResolveError> {
        let node = &self.nodes[node_index];
        let installed = node.installed.expect("requests match installed nodes");
        if let Some(fixed) = &request.fixed
            && compare_versions(&installed.version, fixed).is_ge()
        {
            return Ok(Some(SkipReason::AlreadyFixed {
                installed: installed.version.clone(),
            }));
        }
        if installed.hold {
            return Ok(Some(SkipReason::Held {
                installed: installed.version.clone(),
            }));
        }
        let candidates = self
            .index
            .candidates(&node.name, &self.lookup_arch(&node.arch));
        let chosen = candidates.iter().find(|c| {
            compare_versions(&c.entry.version, &installed.version).is_gt()
                && request
                    .fixed
                    .as_ref()
                    .is_none_or(|f| compare_versions(&c.entry.version, f).is_ge())
        });
        match chosen {
            Some(candidate) => {
                let name = node.name.clone();
                self.set_planned(node_index, Arc::clone(candidate), Reason::Requested, name)?;
                Ok(None)
            }
            None if request.fixed.is_none() => Ok(Some(SkipReason::AlreadyFixed {
                installed: installed.version.clone(),
            })),
            None => Err(ResolveError::NoFixedVersion {
                package: node.label(),
                wanted: request
                    .fixed
                    .as_ref()
                    .map(Version::to_string)
                    .unwrap_or_default(),
                newest: candidates.first().map(|c| c.entry.version.clone()),
            }),
        }
    }

    fn set_planned(
        &mut self,
        node: usize,
        candidate: Arc<Candidate>,
        reason: Reason,
        root: String,
    ) -> Result<(), ResolveError> {
        let entry = &candidate.entry;
        let relation_error = |source| ResolveError::Relation {
            package: format!("{} {}", entry.package, entry.version),
            source,
        };
        let planned = Planned {
            multi_arch: entry.multi_arch,
            depends: entry.depends_relations().map_err(relation_error)?,
            pre_depends: entry.pre_depends_relations().map_err(relation_error)?,
            breaks: entry.breaks_relations().map_err(relation_error)?,
            provides: entry.provides_relations().map_err(relation_error)?,
            candidate: Arc::clone(&candidate),
            reason,
            root,
        };
        tracing::debug!(
            package = %self.nodes[node].label(),
            version = %entry.version,
            reason = %planned.reason,
            "planned"
        );
        self.nodes[node].planned = Some(planned);
        Ok(())
    }

    fn add_node(&mut self, candidate: &Candidate) -> usize {
        self.nodes.push(Node {
            name: candidate.entry.package.clone(),
            arch: candidate.entry.architecture.clone(),
            installed: None,
            planned: None,
        });
        self.nodes.len() - 1
    }

    fn undo_root(&mut self, root: &str) {
        for node in &mut self.nodes {
            if node.planned.as_ref().is_some_and(|p| p.root == root) {
                node.planned = None;
            }
        }
    }

    /// Tells whether `node` may satisfy a relation from a package of `depender_arch`.
    fn arch_matches(&self, node: &Node, depender_arch: &str, qualifier: Option<&str>) -> bool {
        let depender = self.lookup_arch(depender_arch);
        let arch = self.lookup_arch(&node.arch);
        match qualifier {
            None => arch == depender || node.multi_arch() == MultiArch::Foreign,
            Some("any") => arch == depender || node.multi_arch() == MultiArch::Allowed,
            Some(wanted) => arch == wanted,
        }
    }

    fn satisfies(&self, depender_arch: &str, relation: &Relation) -> bool {
        self.nodes.iter().any(|node| {
            if !node.present() || !self.arch_matches(node, depender_arch, relation.arch.as_deref())
            {
                return false;
            }
            if node.name == relation.name && relation.matches_version(node.version()) {
                return true;
            }
            node.provides().iter().any(|provided| {
                provided.name == relation.name
                    && match (&relation.constraint, &provided.constraint) {
                        (None, _) => true,
                        (Some(_), Some((Op::Eq, version))) => relation.matches_version(version),
                        (Some(_), _) => false,
                    }
            })
        })
    }

    fn unsatisfied_groups(&self, node_index: usize) -> Vec<Vec<Relation>> {
        let node = &self.nodes[node_index];
        if !node.present() {
            return Vec::new();
        }
        node.depends_groups()
            .into_iter()
            .filter(|group| !group.iter().any(|r| self.satisfies(&node.arch, r)))
            .cloned()
            .collect()
    }

    /// Returns the nodes that `node`'s Breaks relations hit, with the relation.
    fn broken_by(&self, node_index: usize) -> Vec<(usize, Relation)> {
        let node = &self.nodes[node_index];
        let mut hits = Vec::new();
        if !node.present() {
            return hits;
        }
        for relation in node.breaks().iter().flatten() {
            for (other_index, other) in self.nodes.iter().enumerate() {
                if other_index == node_index || !other.present() || other.name == node.name {
                    continue;
                }
                let by_name =
                    other.name == relation.name && relation.matches_version(other.version());
                let by_provides = relation.constraint.is_none()
                    && other.provides().iter().any(|p| p.name == relation.name);
                if by_name || by_provides {
                    hits.push((other_index, relation.clone()));
                }
            }
        }
        hits
    }

    fn is_planned_name(&self, name: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.name == name && n.planned.is_some())
    }

    fn root_of(&self, node: usize) -> Option<String> {
        self.nodes[node].planned.as_ref().map(|p| p.root.clone())
    }

    /// Finds the first inconsistency and the repair for it.
    fn next_step(&self) -> Option<Step> {
        for node_index in 0..self.nodes.len() {
            if let Some(step) = self.check_dependencies(node_index) {
                return Some(step);
            }
            if let Some(step) = self.check_breaks(node_index) {
                return Some(step);
            }
            if let Some(step) = self.check_multi_arch_same(node_index) {
                return Some(step);
            }
        }
        None
    }

    fn check_dependencies(&self, node_index: usize) -> Option<Step> {
        let node = &self.nodes[node_index];
        for group in self.unsatisfied_groups(node_index) {
            let text = format_relations(std::slice::from_ref(&group));
            if self
                .baseline_unsatisfied
                .contains(&(node_index, text.clone()))
                && node.planned.is_none()
            {
                continue;
            }
            if node.planned.is_some() {
                let root = self.root_of(node_index).unwrap_or_default();
                return Some(self.repair_dependency(node_index, &group, root));
            }
            // An unchanged installed package lost a dependency: one of the alternatives
            // was updated away from the version it needs, so update this package too.
            let updated = self
                .nodes
                .iter()
                .enumerate()
                .find(|(_, other)| {
                    other.planned.is_some() && group.iter().any(|r| r.name == other.name)
                })
                .map(|(index, _)| index);
            let of = updated.map_or_else(|| text.clone(), |i| self.nodes[i].name.clone());
            let root = updated.and_then(|i| self.root_of(i)).unwrap_or_default();
            return Some(self.upgrade_or_fail(
                node_index,
                Reason::ReverseDependency { of: of.clone() },
                root,
                |resolver, candidate| {
                    // Only the groups naming updated packages must hold now; others get
                    // repaired in later passes.
                    let (Ok(depends), Ok(pre_depends)) = (
                        candidate.entry.depends_relations(),
                        candidate.entry.pre_depends_relations(),
                    ) else {
                        return false;
                    };
                    pre_depends
                        .iter()
                        .chain(&depends)
                        .filter(|g| g.iter().any(|r| resolver.is_planned_name(&r.name)))
                        .all(|g| g.iter().any(|r| resolver.satisfies(&node.arch, r)))
                },
                || ResolveError::Unsatisfiable {
                    package: node.label(),
                    version: node.version().clone(),
                    dependency: format!("{text} (no longer met after updating {of})"),
                },
            ));
        }
        None
    }

    /// Plans an update of an installed package or a new package for an unmet group.
    fn repair_dependency(&self, node_index: usize, group: &[Relation], root: String) -> Step {
        let node = &self.nodes[node_index];
        let reason = Reason::Dependency {
            of: node.name.clone(),
        };
        for relation in group {
            let existing: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| {
                    let other = &self.nodes[i];
                    other.name == relation.name
                        && other.present()
                        && self.arch_matches(other, &node.arch, relation.arch.as_deref())
                })
                .collect();
            for other_index in &existing {
                let other = &self.nodes[*other_index];
                if other.held() {
                    return Step::Fail {
                        root,
                        error: ResolveError::Held {
                            package: other.label(),
                            by: format!("{} {}", node.name, node.version()),
                        },
                    };
                }
                let floor = other.installed.map(|i| &i.version);
                let choice = self
                    .index
                    .candidates(&other.name, &self.lookup_arch(&other.arch))
                    .into_iter()
                    .find(|c| {
                        relation.matches_version(&c.entry.version)
                            && floor.is_none_or(|f| compare_versions(&c.entry.version, f).is_ge())
                    });
                if let Some(candidate) = choice {
                    return Step::Plan {
                        node: Some(*other_index),
                        candidate,
                        reason,
                        root,
                    };
                }
            }
            if !existing.is_empty() {
                continue;
            }
            // Not installed at all: install the newest matching version as a new package.
            let arch = match relation.arch.as_deref() {
                None | Some("any") => self.lookup_arch(&node.arch),
                Some(arch) => arch.to_owned(),
            };
            let real = self
                .index
                .candidates(&relation.name, &arch)
                .into_iter()
                .find(|c| relation.matches_version(&c.entry.version));
            let provider = || {
                self.index
                    .providers(&relation.name)
                    .into_iter()
                    .filter(|(c, provided)| {
                        (c.entry.architecture == arch || c.entry.architecture == "all")
                            && match (&relation.constraint, provided) {
                                (None, _) => true,
                                (Some(_), Some((Op::Eq, v))) => relation.matches_version(v),
                                _ => false,
                            }
                    })
                    .map(|(c, _)| c)
                    .min_by(|a, b| a.entry.package.cmp(&b.entry.package))
            };
            if let Some(candidate) = real.or_else(provider) {
                return Step::Plan {
                    node: None,
                    candidate,
                    reason,
                    root,
                };
            }
        }
        Step::Fail {
            root,
            error: ResolveError::Unsatisfiable {
                package: node.label(),
                version: node.version().clone(),
                dependency: format_relations(&[group.to_vec()]),
            },
        }
    }

    /// Plans the newest candidate of `node_index` that `acceptable` allows, or fails.
    fn upgrade_or_fail(
        &self,
        node_index: usize,
        reason: Reason,
        root: String,
        acceptable: impl Fn(&Self, &Candidate) -> bool,
        error: impl FnOnce() -> ResolveError,
    ) -> Step {
        let node = &self.nodes[node_index];
        if node.held() {
            let by = match &reason {
                Reason::Breaks { by } => by.clone(),
                Reason::ReverseDependency { of } | Reason::MultiArchSame { of } => of.clone(),
                _ => String::new(),
            };
            return Step::Fail {
                root,
                error: ResolveError::Held {
                    package: node.label(),
                    by,
                },
            };
        }
        let current = node.version();
        let choice = self
            .index
            .candidates(&node.name, &self.lookup_arch(&node.arch))
            .into_iter()
            .find(|c| compare_versions(&c.entry.version, current).is_gt() && acceptable(self, c));
        match choice {
            Some(candidate) => Step::Plan {
                node: Some(node_index),
                candidate,
                reason,
                root,
            },
            None => Step::Fail {
                root,
                error: error(),
            },
        }
    }

    fn check_breaks(&self, node_index: usize) -> Option<Step> {
        for (other_index, relation) in self.broken_by(node_index) {
            if self.baseline_breaks.contains(&(node_index, other_index))
                && self.nodes[node_index].planned.is_none()
                && self.nodes[other_index].planned.is_none()
            {
                continue;
            }
            let node = &self.nodes[node_index];
            let other = &self.nodes[other_index];
            let conflict = || ResolveError::Conflict {
                package: format!("{} {}", node.label(), node.version()),
                other: format!("{} {}", other.label(), other.version()),
                relation: format!("Breaks: {relation}"),
            };
            // The side that did not change is the one to update.
            if other.planned.is_none() || node.planned.is_some() && other.planned.is_some() {
                let root = self.root_of(node_index).unwrap_or_default();
                return Some(self.upgrade_or_fail(
                    other_index,
                    Reason::Breaks {
                        by: node.name.clone(),
                    },
                    root,
                    |_, c| {
                        !(c.entry.package == relation.name
                            && relation.matches_version(&c.entry.version))
                    },
                    conflict,
                ));
            }
            let root = self.root_of(other_index).unwrap_or_default();
            return Some(self.upgrade_or_fail(
                node_index,
                Reason::Breaks {
                    by: other.name.clone(),
                },
                root,
                |_, c| {
                    c.entry
                        .breaks_relations()
                        .map(|groups| {
                            !groups
                                .iter()
                                .flatten()
                                .any(|r| r.name == other.name && r.matches_version(other.version()))
                        })
                        .unwrap_or(false)
                },
                conflict,
            ));
        }
        None
    }

    fn check_multi_arch_same(&self, node_index: usize) -> Option<Step> {
        let node = &self.nodes[node_index];
        let planned = node.planned.as_ref()?;
        if planned.multi_arch != MultiArch::Same {
            return None;
        }
        let version = &planned.candidate.entry.version;
        for (other_index, other) in self.nodes.iter().enumerate() {
            if other.name != node.name
                || other_index == node_index
                || !other.present()
                || compare_versions(other.version(), version).is_eq()
            {
                continue;
            }
            return Some(self.upgrade_or_fail(
                other_index,
                Reason::MultiArchSame { of: node.label() },
                planned.root.clone(),
                |_, c| compare_versions(&c.entry.version, version).is_eq(),
                || ResolveError::Unsatisfiable {
                    package: other.label(),
                    version: other.version().clone(),
                    dependency: format!("{} (= {version}) for Multi-Arch: same", other.name),
                },
            ));
        }
        None
    }

    /// Returns the planned installs, each Pre-Depends target before its dependent and
    /// otherwise sorted by name and architecture.
    fn into_ordered_installs(self) -> Vec<PlannedInstall> {
        let planned: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].planned.is_some())
            .collect();
        // Edges from a Pre-Depends target to the package that needs it first.
        let mut blockers: HashMap<usize, BTreeSet<usize>> = HashMap::new();
        for &dependent in &planned {
            let node = &self.nodes[dependent];
            let groups = &node.planned.as_ref().expect("planned").pre_depends;
            for relation in groups.iter().flatten() {
                for &target in &planned {
                    let other = &self.nodes[target];
                    let provides = other.provides().iter().any(|p| p.name == relation.name);
                    if target != dependent && (other.name == relation.name || provides) {
                        blockers.entry(dependent).or_default().insert(target);
                    }
                }
            }
        }

        let key = |i: usize| (self.nodes[i].name.clone(), self.nodes[i].arch.clone(), i);
        let mut remaining: BTreeSet<(String, String, usize)> =
            planned.iter().map(|&i| key(i)).collect();
        let mut order = Vec::new();
        while !remaining.is_empty() {
            let ready = remaining
                .iter()
                .find(|(_, _, i)| {
                    blockers
                        .get(i)
                        .is_none_or(|set| set.iter().all(|b| !remaining.contains(&key(*b))))
                })
                .cloned();
            let next = ready.unwrap_or_else(|| {
                // A Pre-Depends cycle: dpkg cannot order it either, so fall back to name order.
                let first = remaining.iter().next().cloned().expect("not empty");
                tracing::debug!(package = %first.0, "Pre-Depends cycle in the plan");
                first
            });
            remaining.remove(&next);
            order.push(next.2);
        }

        let mut nodes: Vec<Option<Node>> = self.nodes.into_iter().map(Some).collect();
        order
            .into_iter()
            .map(|i| {
                let node = nodes[i].take().expect("each node once");
                let planned = node.planned.expect("planned");
                PlannedInstall {
                    name: node.name,
                    arch: node.arch,
                    old_version: node.installed.map(|p| p.version.clone()),
                    candidate: planned.candidate,
                    reason: planned.reason,
                }
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use url::Url;

    use super::*;
    use crate::deb::packages::{PackagesReader, parse_relations, parse_version};

    fn version(text: &str) -> Version {
        parse_version(text).unwrap()
    }

    /// Builds an index from stanzas that lack only Filename, Size and SHA256.
    pub(crate) fn index(stanzas: &[&str]) -> RepoIndex {
        let mut index = RepoIndex::new();
        for stanza in stanzas {
            let text = format!(
                "{stanza}\nFilename: pool/x.deb\nSize: 1\nSHA256: {}\n",
                "0".repeat(64)
            );
            for entry in PackagesReader::new(text.as_bytes(), "test") {
                index
                    .add(Candidate {
                        entry: entry.unwrap(),
                        repo_uri: Url::parse("http://repo.invalid/").unwrap(),
                        origin: "test".to_owned(),
                    })
                    .unwrap();
            }
        }
        index
    }

    pub(crate) fn installed(name: &str, ver: &str, fields: &[(&str, &str)]) -> InstalledPackage {
        let field = |key: &str| {
            let text = fields
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, v)| v);
            parse_relations(text, None).unwrap()
        };
        InstalledPackage {
            name: name.to_owned(),
            arch: fields
                .iter()
                .find(|(k, _)| *k == "Architecture")
                .map_or("amd64", |(_, v)| v)
                .to_owned(),
            version: version(ver),
            multi_arch: fields
                .iter()
                .find(|(k, _)| *k == "Multi-Arch")
                .map_or(MultiArch::No, |(_, v)| v.parse().unwrap()),
            source: name.to_owned(),
            source_version: version(ver),
            depends: field("Depends"),
            pre_depends: field("Pre-Depends"),
            breaks: field("Breaks"),
            provides: field("Provides").into_iter().flatten().collect(),
            status_ok: true,
            hold: fields.iter().any(|(k, _)| *k == "Hold"),
        }
    }

    fn request(name: &str, fixed: &str) -> Request {
        Request {
            name: name.to_owned(),
            arch: None,
            fixed: Some(version(fixed)),
        }
    }

    fn options() -> ResolveOptions {
        ResolveOptions {
            arch: "amd64".to_owned(),
            ignore_errors: false,
        }
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.installs
            .iter()
            .map(|i| format!("{} {} ({})", i.name, i.new_version(), i.reason))
            .collect()
    }

    #[test]
    fn already_fixed_is_skipped() {
        let installed = [installed("openssl", "3.0.22-1~deb12u2", &[])];
        let index = index(&["Package: openssl\nVersion: 3.0.22-1~deb12u2\nArchitecture: amd64"]);
        let plan = resolve(
            &installed,
            &[request("openssl", "3.0.20-1")],
            &index,
            &options(),
        )
        .unwrap();
        assert!(plan.installs.is_empty());
        assert_eq!(
            plan.skipped[0].reason,
            SkipReason::AlreadyFixed {
                installed: version("3.0.22-1~deb12u2")
            }
        );
    }

    #[test]
    fn not_installed_is_skipped() {
        let index = index(&["Package: curl\nVersion: 8\nArchitecture: amd64"]);
        let plan = resolve(&[], &[request("curl", "8")], &index, &options()).unwrap();
        assert_eq!(plan.skipped[0].reason, SkipReason::NotInstalled);
        assert!(plan.installs.is_empty());
    }

    #[test]
    fn missing_fixed_version_errors() {
        let installed = [installed("zlib1g", "1:1.2.13.dfsg-1", &[])];
        let index = index(&["Package: zlib1g\nVersion: 1:1.2.13.dfsg-1\nArchitecture: amd64"]);
        let requests = [request("zlib1g", "1:1.3")];
        let error = resolve(&installed, &requests, &index, &options()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("zlib1g:amd64 >= 1:1.3"), "{message}");
        assert!(message.contains("newest: 1:1.2.13.dfsg-1"), "{message}");

        let lenient = ResolveOptions {
            ignore_errors: true,
            ..options()
        };
        let plan = resolve(&installed, &requests, &index, &lenient).unwrap();
        assert_eq!(plan.failures.len(), 1);
        assert!(plan.installs.is_empty());
    }

    fn pam_world() -> (Vec<InstalledPackage>, RepoIndex) {
        let old = "1.5.2-6+deb12u1";
        let installed = vec![
            installed(
                "libpam-modules",
                old,
                &[("Pre-Depends", "libpam-modules-bin (= 1.5.2-6+deb12u1)")],
            ),
            installed("libpam-modules-bin", old, &[]),
            installed(
                "login",
                "1:4.13+dfsg1-1",
                &[("Pre-Depends", "libpam-modules")],
            ),
        ];
        let index = index(&[
            "Package: libpam-modules\nVersion: 1.5.2-6+deb12u2\nArchitecture: amd64\n\
             Pre-Depends: libpam-modules-bin (= 1.5.2-6+deb12u2)",
            "Package: libpam-modules-bin\nVersion: 1.5.2-6+deb12u2\nArchitecture: amd64",
            "Package: libpam-modules\nVersion: 1.5.2-6+deb12u1\nArchitecture: amd64\n\
             Pre-Depends: libpam-modules-bin (= 1.5.2-6+deb12u1)",
            "Package: libpam-modules-bin\nVersion: 1.5.2-6+deb12u1\nArchitecture: amd64",
        ]);
        (installed, index)
    }

    #[test]
    fn pre_depends_pin_orders_first() {
        let (installed, index) = pam_world();
        let requests = [request("libpam-modules", "1.5.2-6+deb12u2")];
        let plan = resolve(&installed, &requests, &index, &options()).unwrap();
        assert_eq!(
            summary(&plan),
            [
                "libpam-modules-bin 1.5.2-6+deb12u2 (dependency of libpam-modules)",
                "libpam-modules 1.5.2-6+deb12u2 (requested)",
            ]
        );
    }

    #[test]
    fn reverse_dependency_pin_updates_dependent() {
        let (installed, index) = pam_world();
        let requests = [request("libpam-modules-bin", "1.5.2-6+deb12u2")];
        let plan = resolve(&installed, &requests, &index, &options()).unwrap();
        assert_eq!(
            summary(&plan),
            [
                "libpam-modules-bin 1.5.2-6+deb12u2 (requested)",
                "libpam-modules 1.5.2-6+deb12u2 (depends on updated libpam-modules-bin)",
            ]
        );
    }

    #[test]
    fn reverse_dependency_without_candidate_names_both() {
        let (installed, _) = pam_world();
        let index =
            index(&["Package: libpam-modules-bin\nVersion: 1.5.2-6+deb12u2\nArchitecture: amd64"]);
        let requests = [request("libpam-modules-bin", "1.5.2-6+deb12u2")];
        let message = resolve(&installed, &requests, &index, &options())
            .unwrap_err()
            .to_string();
        assert!(message.contains("libpam-modules:amd64"), "{message}");
        assert!(message.contains("libpam-modules-bin"), "{message}");
    }

    #[test]
    fn new_dependency_is_installed() {
        let installed = [installed("libssh-4", "0.10.5-1", &[])];
        let index = index(&[
            "Package: libssh-4\nVersion: 0.10.6-1\nArchitecture: amd64\nDepends: libnew1 (>= 2)",
            "Package: libnew1\nVersion: 1\nArchitecture: amd64",
            "Package: libnew1\nVersion: 2.1\nArchitecture: amd64",
        ]);
        let plan = resolve(
            &installed,
            &[request("libssh-4", "0.10.6-1")],
            &index,
            &options(),
        )
        .unwrap();
        assert_eq!(plan.installs.len(), 2);
        let new = plan.installs.iter().find(|i| i.name == "libnew1").unwrap();
        assert!(new.is_new());
        assert_eq!(new.new_version(), &version("2.1"));
        assert_eq!(
            new.reason,
            Reason::Dependency {
                of: "libssh-4".to_owned()
            }
        );
    }

    #[test]
    fn breaks_updates_installed_package() {
        let installed = [
            installed("libc6", "2.35-1", &[("Multi-Arch", "same")]),
            installed("locales", "2.35-1", &[("Depends", "libc6 (>= 2.35)")]),
        ];
        let index = index(&[
            "Package: libc6\nVersion: 2.36-9\nArchitecture: amd64\nMulti-Arch: same\nBreaks: locales (<< 2.36)",
            "Package: locales\nVersion: 2.36-9\nArchitecture: all\nDepends: libc6 (>= 2.36)",
        ]);
        let plan = resolve(
            &installed,
            &[request("libc6", "2.36-9")],
            &index,
            &options(),
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            [
                "libc6 2.36-9 (requested)",
                "locales 2.36-9 (breaks relation with libc6)"
            ]
        );
    }

    #[test]
    fn provides_satisfies_dependency() {
        let installed = [
            installed("app", "1", &[]),
            installed("mawk", "1.3.4", &[("Provides", "awk")]),
        ];
        let index = index(&[
            "Package: app\nVersion: 2\nArchitecture: amd64\nDepends: awk, mail-transport-agent",
            "Package: exim4\nVersion: 4.96\nArchitecture: amd64\nProvides: mail-transport-agent",
        ]);
        let plan = resolve(&installed, &[request("app", "2")], &index, &options()).unwrap();
        assert_eq!(
            summary(&plan),
            ["app 2 (requested)", "exim4 4.96 (dependency of app)"]
        );
        assert!(plan.installs[1].is_new());
    }

    #[test]
    fn epochs_and_older_security_versions() {
        let installed = [installed("tool", "1:1.0-1", &[])];
        // `2.0` has no epoch, so it is older than any `1:` version.
        let index = index(&[
            "Package: tool\nVersion: 2.0-1\nArchitecture: amd64",
            "Package: tool\nVersion: 1:1.2-1\nArchitecture: amd64",
            "Package: tool\nVersion: 1:1.1-1+deb12u1\nArchitecture: amd64",
        ]);
        let plan = resolve(
            &installed,
            &[request("tool", "1:1.1-1")],
            &index,
            &options(),
        )
        .unwrap();
        assert_eq!(summary(&plan), ["tool 1:1.2-1 (requested)"]);
        let error = resolve(&installed, &[request("tool", "2:0")], &index, &options()).unwrap_err();
        assert!(error.to_string().contains("newest: 1:1.2-1"), "{error}");
    }

    #[test]
    fn held_package_is_not_changed() {
        let installed = [
            installed("bash", "5.2.15-2", &[("Hold", "")]),
            installed("app", "1", &[]),
        ];
        let index = index(&[
            "Package: bash\nVersion: 5.2.15-2+b9\nArchitecture: amd64",
            "Package: app\nVersion: 2\nArchitecture: amd64\nDepends: bash (>= 5.2.15-2+b9)",
        ]);
        let plan = resolve(
            &installed,
            &[request("bash", "5.2.15-2+b9")],
            &index,
            &options(),
        )
        .unwrap();
        assert!(matches!(plan.skipped[0].reason, SkipReason::Held { .. }));
        assert!(plan.installs.is_empty());

        let error = resolve(&installed, &[request("app", "2")], &index, &options()).unwrap_err();
        assert!(matches!(error, ResolveError::Held { .. }), "{error}");
        let lenient = ResolveOptions {
            ignore_errors: true,
            ..options()
        };
        let plan = resolve(&installed, &[request("app", "2")], &index, &lenient).unwrap();
        assert!(plan.installs.is_empty());
        assert_eq!(plan.failures.len(), 1);
    }

    #[test]
    fn multi_arch_same_keeps_versions_equal() {
        let installed = [
            installed("libssl3", "3.0.1", &[("Multi-Arch", "same")]),
            installed(
                "libssl3",
                "3.0.1",
                &[("Multi-Arch", "same"), ("Architecture", "i386")],
            ),
        ];
        let index = index(&[
            "Package: libssl3\nVersion: 3.0.2\nArchitecture: amd64\nMulti-Arch: same",
            "Package: libssl3\nVersion: 3.0.2\nArchitecture: i386\nMulti-Arch: same",
        ]);
        let requests = [Request {
            name: "libssl3".to_owned(),
            arch: Some("amd64".to_owned()),
            fixed: Some(version("3.0.2")),
        }];
        let plan = resolve(&installed, &requests, &index, &options()).unwrap();
        assert_eq!(plan.installs.len(), 2);
        assert_eq!(plan.installs[1].arch, "i386");
        assert_eq!(
            plan.installs[1].reason,
            Reason::MultiArchSame {
                of: "libssl3:amd64".to_owned()
            }
        );
    }

    #[test]
    fn preexisting_breakage_is_ignored() {
        let installed = [
            installed("a", "1", &[("Depends", "missing-package")]),
            installed("b", "1", &[]),
        ];
        let index = index(&["Package: b\nVersion: 2\nArchitecture: amd64"]);
        let plan = resolve(&installed, &[request("b", "2")], &index, &options()).unwrap();
        assert_eq!(summary(&plan), ["b 2 (requested)"]);
    }

    /// Loads bookworm-security for amd64 from the mirror in this machine's apt configuration
    /// and resolves libssl3 from an older installed version.
    #[tokio::test]
    async fn network_security_suite_resolves() {
        use crate::deb::release::Keyring;
        use crate::deb::repo::{FetchOptions, Fetcher, ImageFiles, load_index};
        use crate::deb::sources::{parse_source_files, tests::read_machine_sources};

        struct Host;
        impl ImageFiles for Host {
            fn read(&self, path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
                Ok(std::fs::read(path).ok())
            }
            fn list(&self, _: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
                Ok(Vec::new())
            }
        }

        let sources: Vec<_> = parse_source_files(read_machine_sources())
            .unwrap()
            .into_iter()
            .filter(|s| s.suite == "bookworm-security")
            .collect();
        assert_eq!(
            sources.len(),
            1,
            "apt config has no bookworm-security source"
        );
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let index = load_index(
            &fetcher,
            &sources,
            "amd64",
            &Host,
            &Keyring::new(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        assert!(index.len() > 1000, "{} packages", index.len());

        let newest = index.candidates("libssl3", "amd64")[0].entry.clone();
        let installed = [
            installed("libssl3", "3.0.11-1~deb12u1", &[("Multi-Arch", "same")]),
            installed("libc6", "2.36-9+deb12u1", &[("Multi-Arch", "same")]),
        ];
        let requests = [request("libssl3", "3.0.11-1~deb12u2")];
        let plan = resolve(&installed, &requests, &index, &options()).unwrap();
        let libssl = plan.installs.iter().find(|i| i.name == "libssl3").unwrap();
        assert_eq!(libssl.new_version(), &newest.version);
        assert!(
            libssl
                .candidate
                .deb_url()
                .unwrap()
                .as_str()
                .ends_with(".deb")
        );
    }
}
