//! Records the commit a binary was built from, for `fibd --version`, the start line and
//! `/metrics`. An operator who rolls back, or reads a state-file format note in the runbook,
//! needs to know which build each binary on a box is; the crate version alone does not say.
//!
//! `FIBD_REVISION`, when set, wins (a build from a source tarball can name its commit);
//! otherwise git is asked, and a tree that git cannot read builds as "unknown". Std only:
//! a build script adds no dependency.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FIBD_REVISION");
    let revision = std::env::var("FIBD_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_string());
    // It lands in a log value and a Prometheus label: nothing there may need quoting rules.
    let revision: String = revision
        .trim()
        .chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ' ' | '.' | '-' | '+' | '_' | ':' => c,
            _ => '_',
        })
        .collect();
    println!("cargo:rustc-env=FIBD_REVISION={revision}");
}

/// The abbreviated hash and commit date of HEAD, as `1a2b3c4 2026-11-30`, and the files whose
/// change means HEAD moved (so that a later commit rebuilds with its own revision).
fn from_git() -> Option<String> {
    // Only fibd's own repository says which fibd this is: a source tree unpacked inside
    // another repository must not take that one's commit.
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if Path::new(&top).canonicalize().ok()? != here.canonicalize().ok()? {
        return None;
    }
    // HEAD's reflog changes with every commit, checkout and reset; the branch's own ref file
    // alone would miss a commit made after `git pack-refs` (which `git gc` runs) removed it.
    for path in [
        "HEAD",
        "logs/HEAD",
        "packed-refs",
        &git(&["rev-parse", "--symbolic-full-name", "HEAD"])?,
    ] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            // A path that does not exist would make cargo rerun this script on every build.
            if Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    git(&["log", "-1", "--format=%h %cs"])
}

/// Runs git in the package's directory; its trimmed output, or `None` if it fails or says
/// nothing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
