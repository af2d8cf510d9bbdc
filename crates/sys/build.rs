//! Builds the XDP fast path (issue 15): `bpf/relay.bpf.c` compiled by clang
//! for the bpf target into OUT_DIR, never a checked-in object. Without
//! clang or the libbpf headers (a fresh machine with only Rust) the crate
//! builds without it: one `cargo:warning` line, and `cfg(turnpike_xdp)`
//! stays unset, so the loader reports the program missing at run time.
//! `TURNPIKE_NO_XDP=1` builds without it on purpose.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "bpf/relay.bpf.c";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(turnpike_xdp)");
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=TURNPIKE_NO_XDP");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var_os("TURNPIKE_NO_XDP").is_some_and(|v| v != "0") {
        println!("cargo:warning=XDP fast path not built (TURNPIKE_NO_XDP is set)");
        return;
    }
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    if Command::new(&clang).arg("--version").output().is_err() {
        println!(
            "cargo:warning=XDP fast path not built: clang not found (apt-get install clang libbpf-dev)"
        );
        rerun_after_package_installs();
        return;
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!(
            "cargo:warning=XDP fast path not built: libbpf headers not found (apt-get install libbpf-dev)"
        );
        rerun_after_package_installs();
        return;
    }
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall"]);
    // asm/types.h lives under the multiarch include directory.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("relay.bpf.o");
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(&out);
    let status = cmd.status().expect("clang runs (it answered --version)");
    // clang and the headers are here: a program that does not compile is
    // a bug to fix, not a reason to ship without the fast path.
    assert!(status.success(), "clang failed to compile {SOURCE}");
    println!("cargo:rustc-cfg=turnpike_xdp");
}

/// Built without the program: build again once packages change (CI runs
/// clippy before its test script installs clang and libbpf-dev; the
/// tests must then get the program). dpkg's status file changes with
/// every install; elsewhere, `cargo clean -p turnpike-sys` does it.
fn rerun_after_package_installs() {
    const DPKG_STATUS: &str = "/var/lib/dpkg/status";
    if Path::new(DPKG_STATUS).exists() {
        println!("cargo:rerun-if-changed={DPKG_STATUS}");
    }
}

/// `/usr/include/$(gcc -print-multiarch)`, else the target's triple guess.
fn multiarch_include() -> Option<PathBuf> {
    let from_gcc = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let guess = env::var("CARGO_CFG_TARGET_ARCH")
        .ok()
        .map(|arch| format!("{arch}-linux-gnu"));
    from_gcc
        .into_iter()
        .chain(guess)
        .map(|t| Path::new("/usr/include").join(t))
        .find(|p| p.join("asm/types.h").exists())
}
