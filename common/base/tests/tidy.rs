//! Tidy checks over the whole workspace, run with the unit tests: every Rust file starts with a
//! `//!` doc; no test is skipped or expects a panic; no stub macros or leftover fix-me markers; no
//! unbounded channels; and the crate dependency rules of ARCHITECTURE.md hold.

#![allow(
    clippy::unwrap_used,
    reason = "a tidy check that cannot read the tree should fail loudly"
)]

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The checkout being tested. Read when the test runs (cargo sets it), not when it compiles:
/// checkouts share one target directory, and a binary compiled in another checkout is reused
/// when the sources match, so a compiled-in path could name a checkout that is gone.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "node_modules" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    assert!(
        files.len() > 20,
        "tidy found too few files: {}",
        files.len()
    );
    files
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for file in all_rust_files() {
        let text = fs::read_to_string(&file).unwrap();
        let first_code = text
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        if !first_code.starts_with("//!") {
            missing.push(file.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:#?}"
    );
}

#[test]
fn no_skipped_tests_stubs_or_unbounded_queues() {
    // Built from pieces so this file does not flag itself.
    let banned = [
        ["#[", "ignore"].concat(),
        ["#[", "should_panic"].concat(),
        ["todo", "!("].concat(),
        ["unimplemented", "!("].concat(),
        ["dbg", "!("].concat(),
        ["FIX", "ME"].concat(),
        ["unbounded", "_channel"].concat(),
    ];
    let mut found = Vec::new();
    for file in all_rust_files() {
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for pattern in &banned {
                if line.contains(pattern.as_str()) {
                    found.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "banned patterns: {found:#?}");
}

fn dependencies(manifest: &str) -> Vec<String> {
    let text = fs::read_to_string(workspace_root().join(manifest)).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        let name = line.split(['.', ' ', '=']).next().filter(|n| !n.is_empty());
        if let (true, Some(name)) = (in_deps, name) {
            deps.push(name.to_owned());
        }
    }
    deps
}

#[test]
fn crate_dependencies_follow_the_architecture() {
    let servers = ["shoal-router", "shoal-config", "shoal-shard"];
    let commons = [
        "common/base",
        "common/wire",
        "common/query",
        "common/rpc",
        "common/docstore",
        "common/node",
        "common/member",
    ];
    for common in commons {
        let deps = dependencies(&format!("{common}/Cargo.toml"));
        for server in servers {
            assert!(
                !deps.iter().any(|d| d == server),
                "{common} depends on server crate {server}"
            );
        }
    }
    for (dir, own) in [
        ("router", "shoal-router"),
        ("configsvr", "shoal-config"),
        ("shard", "shoal-shard"),
    ] {
        let deps = dependencies(&format!("{dir}/Cargo.toml"));
        for server in servers.iter().filter(|s| **s != own) {
            assert!(
                !deps.iter().any(|d| d == server),
                "{dir} depends on server crate {server}"
            );
        }
    }
    let router = dependencies("router/Cargo.toml");
    for storage in ["rocksdb", "shoal-docstore", "shoal-member"] {
        assert!(
            !router.iter().any(|d| d == storage),
            "the router must hold no data but links {storage}"
        );
    }
    let base = dependencies("common/base/Cargo.toml");
    assert!(
        !base.iter().any(|d| d.starts_with("shoal-")),
        "shoal-common depends on {base:?}"
    );
}
