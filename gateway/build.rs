//! Captures the source commit for `keel_build_info`: `GIT_COMMIT` when the build sets it (CI,
//! a container build without `.git`), otherwise `git rev-parse HEAD`, otherwise `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = match std::env::var("GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
            for path in ["HEAD", "packed-refs"]
                .into_iter()
                .filter_map(|p| git(&["rev-parse", "--git-path", p]))
                .chain(git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])))
            {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=GATEWAY_GIT_COMMIT={commit}");
}
