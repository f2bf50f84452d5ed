//! Building workspace binaries from inside a test (the demo's services, the
//! example consumers), into the test's own target directory and profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{repo_dir, target_dir};

/// Builds (or finds up to date) the binaries of `packages` in the profile of
/// this test (`target/<profile>`), and returns that directory.
pub fn cargo_build(packages: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bins"])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(repo_dir());
    // What cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …)
    // is not the build's: build scripts that watch these variables (ring's)
    // would rebuild everything on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_test_runtime_var(&name) {
            cmd.env_remove(&*name);
        }
    }
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build of {packages:?} failed");
    bin_dir
}

/// The variables cargo sets for a running test, not for builds.
fn is_test_runtime_var(name: &str) -> bool {
    name == "OUT_DIR"
        || name == "CARGO_CRATE_NAME"
        || name == "CARGO_PRIMARY_PACKAGE"
        || name == "CARGO_TARGET_TMPDIR"
        || name == "CARGO_RUSTC_CURRENT_DIR"
        || ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}
