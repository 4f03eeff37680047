//! End-to-end test of `layermend patch` without a report on the bookworm image: it must
//! choose the same upgrades as `apt-get -s upgrade` against the image's own apt sources.
//!
//! Needs root, the network access apt is configured for, and the tools `.ci/run` installs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::{
    BookwormFixture, ManifestFormat, Registry, bookworm_fixture, layermend, push_layout, run,
};

/// Runs `apt-get ARGS` on the host against `rootfs`'s apt configuration and dpkg status,
/// keeping apt's lists and caches in `state`, so the fixture stays unchanged.
fn apt_get(rootfs: &Path, state: &Path, args: &[&str]) -> String {
    for dir in ["lists/partial", "cache/archives/partial"] {
        fs_err::create_dir_all(state.join(dir)).unwrap();
    }
    let option = |name: &str, value: &Path| format!("{name}={}", value.display());
    let output = run(Command::new("apt-get")
        .arg("-q")
        .arg("-o")
        .arg(option("Dir::Etc", &rootfs.join("etc/apt")))
        .arg("-o")
        .arg(option("Dir::State", state))
        .arg("-o")
        .arg(option("Dir::State::Lists", &state.join("lists")))
        .arg("-o")
        .arg(option("Dir::Cache", &state.join("cache")))
        .arg("-o")
        .arg(option(
            "Dir::State::status",
            &rootfs.join("var/lib/dpkg/status"),
        ))
        .args([
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "APT::Architecture=amd64",
            "-o",
            "Acquire::Languages=none",
        ])
        .args(args));
    String::from_utf8(output.stdout).unwrap()
}

/// Parses `Inst NAME [OLD] (NEW SUITE [ARCH])` lines of `apt-get -s` into NAME -> NEW.
fn simulated_installs(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("Inst "))
        .map(|rest| {
            let name = rest.split_whitespace().next().unwrap().to_owned();
            let version = rest
                .split_once('(')
                .unwrap()
                .1
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            (name, version)
        })
        .collect()
}

#[test]
fn update_all_matches_apt_get_upgrade() {
    let fixture = bookworm_fixture();
    let state = tempfile::tempdir().unwrap();
    apt_get(&fixture.rootfs, state.path(), &["update"]);
    let expected = simulated_installs(&apt_get(&fixture.rootfs, state.path(), &["-s", "upgrade"]));

    let registry = Registry::start();
    push_layout(
        &fixture.layout,
        BookwormFixture::TAG,
        &registry,
        "debian:bookworm",
        ManifestFormat::Oci,
    );
    let outcome = layermend(&[
        "patch",
        "-i",
        &registry.image("debian:bookworm"),
        "--format",
        "json",
    ]);
    let code = if expected.is_empty() { 3 } else { 0 };
    assert_eq!(outcome.code, code, "{outcome}");
    let result: Value = serde_json::from_str(&outcome.stdout).unwrap();
    let chosen: BTreeMap<String, String> = result["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|update| {
            (
                update["name"].as_str().unwrap().to_owned(),
                update["new_version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(chosen, expected);
}
