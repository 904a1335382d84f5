//! The container image (`deploy/Dockerfile`) holds every shared library the `trike` binary
//! needs: the binary's ELF `NEEDED` entries (read by `readelf`) against the packages the
//! runtime stage installs and those of its base image. A library the build links but the image
//! lacks stops `trike` at its start, before it can log anything. (Root-package test so that
//! Cargo builds the binary and tells us where.)

use std::process::Command;

/// The Debian bookworm package of each shared library a build of `trike` may link.
const PACKAGES: &[(&str, &str)] = &[
    ("libc.so.6", "libc6"),
    ("libm.so.6", "libc6"),
    ("libpthread.so.0", "libc6"),
    ("libdl.so.2", "libc6"),
    ("librt.so.1", "libc6"),
    ("libutil.so.1", "libc6"),
    ("ld-linux-x86-64.so.2", "libc6"),
    ("libgcc_s.so.1", "libgcc-s1"),
    ("libstdc++.so.6", "libstdc++6"),
    ("libz.so.1", "zlib1g"),
    ("libssl.so.3", "libssl3"),
    ("libcrypto.so.3", "libssl3"),
    ("libzstd.so.1", "libzstd1"),
    ("liblz4.so.1", "liblz4-1"),
    ("libsasl2.so.2", "libsasl2-2"),
];

/// Packages of `debian:bookworm-slim` that an image may rely on without installing them.
const BASE: &[&str] = &["libc6", "libgcc-s1"];

/// The packages `apt-get install` names in the Dockerfile's last stage.
fn runtime_packages(dockerfile: &str) -> Vec<String> {
    let text = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = text.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("FROM "))
        .expect("a FROM line");
    let mut packages = Vec::new();
    for line in &lines[last..] {
        for (_, rest) in line
            .match_indices("apt-get install")
            .map(|(i, m)| line.split_at(i + m.len()))
        {
            packages.extend(
                rest.split_whitespace()
                    .take_while(|w| !matches!(*w, "&&" | ";" | "||"))
                    .filter(|w| !w.starts_with('-'))
                    .map(str::to_string),
            );
        }
    }
    packages
}

/// Scenario: the debug build of `trike` (the release build links the same libraries).
/// Guarantees: each library it needs is in the runtime stage's packages or the base image's.
#[test]
fn the_image_holds_every_library_the_binary_links() {
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_trike")])
        .output()
        .expect("readelf runs (binutils, installed with build-essential by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let needed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect();
    assert!(
        needed.iter().any(|l| l == "libc.so.6"),
        "NEEDED not read: {needed:?}"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let installed = runtime_packages(&dockerfile);
    assert!(
        installed.iter().any(|p| p == "ca-certificates"),
        "packages not read: {installed:?}"
    );
    for lib in &needed {
        let Some((_, package)) = PACKAGES.iter().find(|(l, _)| l == lib) else {
            panic!("`trike` links {lib}: add its Debian package to PACKAGES (and to the image)");
        };
        assert!(
            BASE.contains(package) || installed.iter().any(|p| p == package),
            "deploy/Dockerfile's runtime stage lacks {package} (for {lib}): `trike` would not \
             start in the image; it installs {installed:?}"
        );
    }
}
