//! End-to-end tests of the command line as CI pipelines use it: report formats, the JSON
//! result, OpenVEX output, dry runs, bulk runs, progress on a terminal, and the help,
//! completion and man page texts. Patches run against the bookworm fixture in a real
//! registry, with the report of real bookworm-security updates.
//!
//! Snapshots live in tests/snapshots/; `UPDATE_SNAPSHOTS=1 cargo test --test cli_e2e`
//! rewrites them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use common::{
    BookwormFixture, ManifestFormat, Outcome, Registry, bookworm_fixture, layermend,
    layermend_with_env, push_layout, run, security_fixture,
};

const REPOSITORY: &str = "debian";
const SOURCE_TAG: &str = "bookworm";

fn registry_with_fixture(tags: &[&str]) -> Registry {
    let fixture = bookworm_fixture();
    let registry = Registry::start();
    for tag in tags {
        push_layout(
            &fixture.layout,
            BookwormFixture::TAG,
            &registry,
            &format!("{REPOSITORY}:{tag}"),
            ManifestFormat::Oci,
        );
    }
    registry
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn trivy_report() -> Value {
    serde_json::from_slice(&fs_err::read(&security_fixture().report).unwrap()).unwrap()
}

/// Returns the (package, installed, fixed, CVE) rows of the fixture's Trivy report.
fn report_rows() -> Vec<(String, String, String, String)> {
    let report = trivy_report();
    let mut rows = Vec::new();
    for result in report["Results"].as_array().unwrap() {
        for v in result["Vulnerabilities"].as_array().into_iter().flatten() {
            let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
            rows.push((
                text("PkgName"),
                text("InstalledVersion"),
                text("FixedVersion"),
                text("VulnerabilityID"),
            ));
        }
    }
    assert!(
        !rows.is_empty(),
        "the fixture report lists no vulnerability"
    );
    rows
}

/// Converts the fixture's report to Grype's JSON format.
fn grype_report() -> Value {
    let matches: Vec<Value> = report_rows()
        .into_iter()
        .map(|(name, installed, fixed, id)| {
            json!({
                "vulnerability": {"id": id, "namespace": "debian:distro:debian:12",
                                  "fix": {"versions": [fixed], "state": "fixed"}},
                "artifact": {"name": name, "version": installed, "type": "deb",
                             "purl": format!("pkg:deb/debian/{name}@{installed}?distro=debian-12")}
            })
        })
        .collect();
    json!({
        "matches": matches,
        "source": {"type": "image", "target": {"userInput": "debian:bookworm"}},
        "distro": {"name": "debian", "version": "12", "idLike": []},
        "descriptor": {"name": "grype"}
    })
}

/// Converts the fixture's report to copa's scanner-plugin format, `v1alpha1` or `v1alpha2`.
fn plugin_report(api_version: &str) -> Value {
    let updates: Vec<Value> = report_rows()
        .into_iter()
        .map(|(name, installed, fixed, id)| {
            json!({"name": name, "installedVersion": installed, "fixedVersion": fixed,
                   "vulnerabilityID": id, "type": "deb", "class": "os-pkgs"})
        })
        .collect();
    let key = if api_version == "v1alpha1" {
        "updates"
    } else {
        "osupdates"
    };
    json!({
        "apiVersion": api_version,
        "metadata": {"os": {"type": "debian", "version": "12"}, "config": {"arch": "amd64"}},
        key: updates
    })
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    fs_err::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn parse_stdout(outcome: &Outcome) -> Value {
    serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|err| panic!("stdout must be one JSON document: {err}\n{outcome}"))
}

/// Returns the set of (name, new version) pairs a JSON result lists.
fn planned_updates(result: &Value) -> BTreeSet<(String, String)> {
    result["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["new_version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// --- snapshots -----------------------------------------------------------------------

/// Compares `actual` with tests/snapshots/NAME, or writes it with `UPDATE_SNAPSHOTS=1`.
fn check_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        fs_err::write(&path, actual).unwrap();
        return;
    }
    let expected = fs_err::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {} differs; rerun with UPDATE_SNAPSHOTS=1 to accept\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// Replaces digests, loopback ports and durations, which change from run to run.
fn filter_volatile(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("sha256:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 7..];
        let hex_len = after.chars().take_while(char::is_ascii_hexdigit).count();
        out.push_str(if hex_len == 64 {
            "sha256:<digest>"
        } else {
            "sha256:"
        });
        rest = &after[if hex_len == 64 { 64 } else { 0 }..];
    }
    out.push_str(rest);
    let mut filtered = String::new();
    for line in out.split_inclusive('\n') {
        let mut line = line.to_owned();
        while let Some(start) = line.find("127.0.0.1:") {
            let port_start = start + "127.0.0.1:".len();
            let port_len = line[port_start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            line.replace_range(start..port_start + port_len, "<registry>");
        }
        filtered.push_str(&line);
    }
    filtered
}

/// Replaces the values that depend on today's security updates by their type, keeping
/// every key: the layout of the JSON result, which the README documents as stable. An
/// array of objects becomes one object with the keys of all its elements. Any other array
/// becomes `"<array>"`, because whether it is empty depends on the day's updates.
fn json_shape(value: &Value, key: &str) -> Value {
    const KEPT: &[&str] = &["status", "report_format", "id", "version_id"];
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json_shape(v, k)))
                .collect(),
        ),
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            let mut merged = serde_json::Map::new();
            for item in items {
                if let Value::Object(shape) = json_shape(item, key) {
                    for (field, value) in shape {
                        // A null (a package new to the image) must not hide the type.
                        if !value.is_null() || !merged.contains_key(&field) {
                            merged.insert(field, value);
                        }
                    }
                }
            }
            Value::Array(vec![Value::Object(merged)])
        }
        Value::Array(_) => Value::String("<array>".to_owned()),
        Value::String(text) if KEPT.contains(&key) => Value::String(text.clone()),
        Value::String(_) => Value::String("<string>".to_owned()),
        Value::Number(n) if key == "schema_version" => Value::Number(n.clone()),
        Value::Number(_) => Value::String("<number>".to_owned()),
        other => other.clone(),
    }
}

/// Reduces the human summary to its line kinds: package rows and script lines depend on
/// today's updates, so each kind is kept once.
fn summary_shape(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in filter_volatile(text).lines() {
        let kind = if line.contains(" -> ") && !line.starts_with("patched ") {
            "PACKAGE INSTALLED -> NEW CVES".to_owned()
        } else if line.starts_with("not run for ") {
            "not run for PACKAGE: SCRIPTS".to_owned()
        } else if line.starts_with("skipped ") {
            "skipped PACKAGE: REASON".to_owned()
        } else {
            line.to_owned()
        };
        if lines.last() != Some(&kind) {
            lines.push(kind);
        }
    }
    lines.join("\n") + "\n"
}

#[test]
fn help_texts_match_snapshots() {
    for (name, args) in [
        ("help.txt", vec!["--help"]),
        ("help-patch.txt", vec!["patch", "--help"]),
        ("help-completions.txt", vec!["completions", "--help"]),
        ("help-man.txt", vec!["man", "--help"]),
    ] {
        let outcome = layermend_with_env(&args, &[("COLUMNS", "100")]);
        assert_eq!(outcome.code, 0, "{outcome}");
        check_snapshot(name, &outcome.stdout);
    }
}

#[test]
fn completions_and_man_page_come_from_definitions() {
    let bash = layermend(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{bash}");
    for flag in ["--dry-run", "--scanner", "--config", "--output-format"] {
        assert!(bash.stdout.contains(flag), "bash completion lacks {flag}");
    }
    let zsh = layermend(&["completions", "zsh"]);
    assert!(zsh.stdout.contains("#compdef layermend"), "{zsh}");
    let man = layermend(&["man"]);
    assert!(man.stdout.contains(".TH layermend 1"), "{man}");
    let patch_man = layermend(&["man", "patch"]);
    assert!(
        patch_man.stdout.contains(".TH layermend-patch 1"),
        "{patch_man}"
    );
    assert!(patch_man.stdout.contains("dry\\-run"), "{patch_man}");
    let unknown = layermend(&["man", "frobnicate"]);
    assert_eq!(unknown.code, 2, "{unknown}");
}

// --- one patch: JSON result, VEX, human summary -----------------------------------------

/// Validates `document` against the vendored OpenVEX schema with python3's jsonschema.
fn validate_openvex(document: &Path) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/openvex_json_schema.json");
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  document = json.load(open(sys.argv[2]))\n\
                  jsonschema.Draft202012Validator(schema, \
                  format_checker=jsonschema.FormatChecker()).validate(document)\n";
    run(Command::new("python3")
        .args(["-c", script])
        .arg(&schema)
        .arg(document));
}

#[test]
fn json_result_and_openvex_document() {
    let registry = registry_with_fixture(&[SOURCE_TAG]);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let dir = tempfile::tempdir().unwrap();
    let vex = dir.path().join("vex.json");
    let report = path_str(&security_fixture().report);
    let outcome = layermend_with_env(
        &[
            "patch",
            "-i",
            &source,
            "-r",
            report,
            "--output-format",
            "json",
            "-f",
            "openvex",
            "-o",
            path_str(&vex),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_eq!(outcome.code, 0, "{outcome}");
    let result = parse_stdout(&outcome);

    let pushed = registry
        .manifest(REPOSITORY, "bookworm-patched")
        .unwrap_or_else(|| panic!("nothing pushed\n{outcome}"));
    assert_eq!(result["status"], "patched");
    assert_eq!(result["manifest_digest"], pushed.digest.as_str());
    assert_eq!(result["report_format"], "trivy");
    assert_eq!(result["distro"]["id"], "debian");
    assert_eq!(result["distro"]["version_id"], "12");
    let updates = planned_updates(&result);
    for update in &security_fixture().updates {
        assert!(
            updates.contains(&(update.name.clone(), update.fixed.clone())),
            "result must list {} {}\n{outcome}",
            update.name,
            update.fixed
        );
    }
    // With JSON on stdout, the human summary goes to stderr.
    assert!(outcome.stderr.contains("patched "), "{outcome}");
    check_snapshot(
        "result-json-shape.json",
        &(serde_json::to_string_pretty(&json_shape(&result, "")).unwrap() + "\n"),
    );

    validate_openvex(&vex);
    let document: Value = serde_json::from_slice(&fs_err::read(&vex).unwrap()).unwrap();
    let cves: BTreeSet<String> = report_rows().into_iter().map(|row| row.3).collect();
    let statements = document["statements"].as_array().unwrap();
    let named: BTreeSet<String> = statements
        .iter()
        .map(|s| s["vulnerability"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, cves, "one statement per fixed CVE");
    let product = format!(
        "pkg:oci/{REPOSITORY}@{}?repository_url={}/{REPOSITORY}&tag=bookworm-patched",
        pushed.digest,
        registry.host()
    );
    for statement in statements {
        assert_eq!(statement["status"], "fixed");
        assert_eq!(statement["products"][0]["@id"], product.as_str());
        for sub in statement["products"][0]["subcomponents"]
            .as_array()
            .unwrap()
        {
            let id = sub["@id"].as_str().unwrap();
            assert!(
                id.starts_with("pkg:deb/debian/") && id.ends_with("&distro=debian-12"),
                "{id}"
            );
        }
    }
    assert_eq!(document["timestamp"], "2023-11-14T22:13:20Z");

    // The same patch again, human output: its summary, filtered, is a snapshot.
    let text = layermend(&["patch", "-i", &source, "-r", report, "-t", "again"]);
    assert_eq!(text.code, 0, "{text}");
    check_snapshot("summary-text.txt", &summary_shape(&text.stdout));
    // Without a terminal, progress is one plain line per phase on stderr.
    for phase in [
        "resolving the image",
        "downloading packages",
        "pushing the patched image",
    ] {
        assert!(
            text.stderr.contains(phase),
            "stderr lacks {phase:?}\n{text}"
        );
    }
    assert!(
        !text.stderr.contains('\r'),
        "no bar redraws without a terminal"
    );
}

#[test]
fn vex_not_written_when_nothing_fixed() {
    let registry = registry_with_fixture(&[SOURCE_TAG]);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let dir = tempfile::tempdir().unwrap();
    let mut report = trivy_report();
    report["Results"][0]["Vulnerabilities"] = json!([]);
    let report = write_json(dir.path(), "empty.json", &report);
    let vex = dir.path().join("vex.json");
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&report),
        "-f",
        "openvex",
        "-o",
        path_str(&vex),
    ]);
    assert_eq!(outcome.code, 3, "{outcome}");
    assert!(
        !vex.exists(),
        "no VEX document without a fixed vulnerability"
    );
    assert!(outcome.stderr.contains("no VEX document"), "{outcome}");
}

#[test]
fn json_failure_document_names_field() {
    let registry = registry_with_fixture(&[SOURCE_TAG]);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let dir = tempfile::tempdir().unwrap();
    let mut report = trivy_report();
    report["Results"][0]["Vulnerabilities"][0]["FixedVersion"] = json!(7);
    let report = write_json(dir.path(), "typed.json", &report);
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&report),
        "--output-format",
        "json",
    ]);
    assert_eq!(outcome.code, 2, "{outcome}");
    let document = parse_stdout(&outcome);
    assert_eq!(document["status"], "failed", "{outcome}");
    assert_eq!(document["exit_code"], 2, "{outcome}");
    let error = document["error"].as_str().unwrap();
    assert!(
        error.contains("Results[0].Vulnerabilities[0].FixedVersion"),
        "{error}"
    );
    assert!(
        outcome.stderr.contains(error.lines().next().unwrap()),
        "{outcome}"
    );
}

// --- dry runs and report formats ---------------------------------------------------------

#[test]
fn dry_run_plans_same_updates_for_every_format() {
    let registry = registry_with_fixture(&[SOURCE_TAG]);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let reports = [
        ("trivy", security_fixture().report.clone()),
        (
            "grype",
            write_json(dir.path(), "grype.json", &grype_report()),
        ),
        (
            "native",
            write_json(dir.path(), "v1alpha1.json", &plugin_report("v1alpha1")),
        ),
        (
            "native",
            write_json(dir.path(), "v1alpha2.json", &plugin_report("v1alpha2")),
        ),
    ];
    let mut plans = Vec::new();
    for (format, report) in &reports {
        let outcome = layermend(&[
            "patch",
            "-i",
            &source,
            "-r",
            path_str(report),
            "--dry-run",
            "--format",
            "json",
            "--work-dir",
            path_str(&work),
        ]);
        assert_eq!(outcome.code, 0, "a dry run with updates exits 0\n{outcome}");
        let result = parse_stdout(&outcome);
        assert_eq!(result["status"], "planned", "{outcome}");
        assert_eq!(result["report_format"], *format, "{outcome}");
        assert!(result["manifest_digest"].is_null());
        assert!(outcome.stderr.contains("dry run: would patch"), "{outcome}");
        plans.push(planned_updates(&result));
    }
    for (plan, (_, report)) in plans.iter().zip(&reports).skip(1) {
        assert_eq!(
            plan,
            &plans[0],
            "{} must plan what the Trivy report plans",
            report.display()
        );
    }
    assert!(
        registry.manifest(REPOSITORY, "bookworm-patched").is_none(),
        "a dry run pushes nothing"
    );
    assert!(
        !work.join("debs").exists(),
        "a dry run downloads no package"
    );

    // Forcing a scanner that does not match the content is a user error.
    let forced = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&reports[1].1),
        "--scanner",
        "trivy",
        "--dry-run",
    ]);
    assert_eq!(forced.code, 2, "{forced}");
    assert!(
        forced.stderr.contains("not a valid Trivy JSON report"),
        "{forced}"
    );

    // A document of no known shape lists the accepted formats.
    let unknown = write_json(dir.path(), "unknown.json", &json!({"vulns": []}));
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&unknown),
        "--dry-run",
    ]);
    assert_eq!(outcome.code, 2, "{outcome}");
    for name in ["Trivy", "Grype", "copa", "v1alpha1"] {
        assert!(
            outcome.stderr.contains(name),
            "the error must list {name}\n{outcome}"
        );
    }

    // Nothing to patch: exit 3, also in a dry run.
    let mut empty = trivy_report();
    empty["Results"][0]["Vulnerabilities"] = json!([]);
    let empty = write_json(dir.path(), "empty.json", &empty);
    let outcome = layermend(&["patch", "-i", &source, "-r", path_str(&empty), "--dry-run"]);
    assert_eq!(outcome.code, 3, "{outcome}");
}

// --- bulk --------------------------------------------------------------------------------

#[test]
fn bulk_run_reports_each_image() {
    let registry = registry_with_fixture(&["bookworm", "second"]);
    let dir = tempfile::tempdir().unwrap();
    let report = path_str(&security_fixture().report);
    let config = dir.path().join("images.yaml");
    let image = |tag: &str| registry.image(&format!("{REPOSITORY}:{tag}"));
    fs_err::write(
        &config,
        format!(
            "- image: {first}\n  report: {report}\n\
             - image: {second}\n  report: {report}\n  tag: second-fixed\n\
             - image: {missing}\n  report: {report}\n",
            first = image("bookworm"),
            second = image("second"),
            missing = image("missing"),
        ),
    )
    .unwrap();
    let work = dir.path().join("work");
    let outcome = layermend(&[
        "patch",
        "--config",
        path_str(&config),
        "--jobs",
        "2",
        "--format",
        "json",
        "--work-dir",
        path_str(&work),
    ]);
    assert_eq!(
        outcome.code, 1,
        "one image failed, so the run fails\n{outcome}"
    );
    let result = parse_stdout(&outcome);
    assert_eq!(result["failed"], 1, "{outcome}");
    let images = result["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(images[0]["status"], "patched", "{outcome}");
    assert_eq!(images[1]["status"], "patched", "{outcome}");
    assert_eq!(images[2]["status"], "failed", "{outcome}");
    assert!(
        images[2]["error"].as_str().unwrap().contains("missing"),
        "the error must name the image\n{outcome}"
    );
    for (tag, index) in [("bookworm-patched", 0), ("second-fixed", 1)] {
        let pushed = registry
            .manifest(REPOSITORY, tag)
            .unwrap_or_else(|| panic!("{tag} was not pushed\n{outcome}"));
        assert_eq!(
            images[index]["result"]["manifest_digest"],
            pushed.digest.as_str()
        );
    }
    // Both images installed the same packages through one shared download cache, which
    // contains one file per package.
    let cached = fs_err::read_dir(work.join("packages")).unwrap().count();
    let installed = images[0]["result"]["updates"].as_array().unwrap().len();
    assert_eq!(cached, installed, "{outcome}");
    // Progress lines carry the image they belong to.
    assert!(
        outcome.stderr.contains(&format!("[{}]", image("second"))),
        "{outcome}"
    );
}

// --- progress on a terminal --------------------------------------------------------------

#[test]
fn bulk_run_keeps_every_layout_tag() {
    let registry = registry_with_fixture(&["bookworm"]);
    let dir = tempfile::tempdir().unwrap();
    let report = path_str(&security_fixture().report);
    let layout = dir.path().join("layout");
    let config = dir.path().join("images.yaml");
    let source = registry.image(&format!("{REPOSITORY}:bookworm"));
    fs_err::write(
        &config,
        format!(
            "- image: {source}\n  report: {report}\n  tag: oci:{layout}:first\n\
             - image: {source}\n  report: {report}\n  tag: oci:{layout}:second\n",
            layout = layout.display(),
        ),
    )
    .unwrap();
    let outcome = layermend(&[
        "patch",
        "--config",
        path_str(&config),
        "--jobs",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");
    let index: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    let tags: BTreeSet<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(tags, BTreeSet::from(["first", "second"]), "{outcome}");
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[test]
fn progress_bars_on_terminal() {
    let registry = registry_with_fixture(&[SOURCE_TAG]);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let docker_config = tempfile::tempdir().unwrap();
    let command = [
        env!("CARGO_BIN_EXE_layermend"),
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&security_fixture().report),
        "-t",
        "pty",
    ]
    .iter()
    .map(|arg| shell_quote(arg))
    .collect::<Vec<_>>()
    .join(" ");
    // script(1) runs the command on a pseudo-terminal and copies what it draws to stdout.
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("DOCKER_CONFIG", docker_config.path())
        .env("COLUMNS", "120")
        .env("TERM", "xterm")
        .output()
        .expect("run script from util-linux");
    let screen = String::from_utf8_lossy(&output.stdout);
    eprintln!("{screen}");
    assert!(output.status.success(), "{screen}");
    for needle in [
        "layers",
        "packages",
        "push",
        "[=",
        "downloading packages",
        "patched ",
    ] {
        assert!(
            screen.contains(needle),
            "the terminal output lacks {needle:?}"
        );
    }
    assert!(registry.manifest(REPOSITORY, "pty").is_some());
}
