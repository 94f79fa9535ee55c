//! Release builds of `weft` place the functions a proxy runs side by side (and `weft --version`
//! says whether the build was profile-guided).
//!
//! `hot-code.txt` (written by `bench/code-order`) lists the functions that run for every proxied
//! request, hottest first, then the rest of the code a proxy ran at all; the linker puts them at
//! the start of the text segment in that order (lld's `--symbol-ordering-file`). Scattered over a
//! 35 MiB text segment, they kept ~8 MiB of code resident in an idle proxy that had served
//! requests (the kernel maps 64 KiB or more around each page first touched). Names that no longer
//! exist after a code change are skipped (regenerate the list after large changes).
//!
//! Only for release builds on Linux, and only when the linker takes the option: a tiny program is
//! linked with it first, with the linker and rustflags this build uses (rustc links with its own
//! lld by default on x86_64 Linux since 1.90; GNU ld and gold refuse the option, and then nothing
//! is added). `WEFT_NO_CODE_ORDER` set leaves the order to the linker; `WEFT_CODE_ORDER` names another
//! list.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=hot-code.txt");
    println!("cargo:rerun-if-env-changed=WEFT_NO_CODE_ORDER");
    println!("cargo:rerun-if-env-changed=WEFT_CODE_ORDER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    // What `weft --version` adds: which kind of profile-guided build this is, if it is one
    // (`scripts/build-release`). Said explicitly: with `--target`, a change of rustflags alone
    // does not rerun a build script.
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let note = if flags.contains("profile-use=") {
        " (profile-guided)"
    } else if flags.contains("profile-generate=") {
        " (instrumented for profile-guided optimisation)"
    } else {
        ""
    };
    println!("cargo:rustc-env=WEFT_BUILD_NOTE={note}");
    if env("PROFILE") != "release"
        || env("CARGO_CFG_TARGET_OS") != "linux"
        || std::env::var_os("WEFT_NO_CODE_ORDER").is_some()
    {
        return;
    }
    // Another list for this build (`scripts/build-release` writes one for its profile-guided
    // build, whose names differ from a plain build's).
    let list = match std::env::var_os("WEFT_CODE_ORDER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(&env("CARGO_MANIFEST_DIR")).join("hot-code.txt"),
    };
    if !list.is_file() {
        if std::env::var_os("WEFT_CODE_ORDER").is_some() {
            println!(
                "cargo:warning=WEFT_CODE_ORDER names no file ({}): weft's code is laid out by the linker alone",
                list.display()
            );
        }
        return;
    }
    println!("cargo:rerun-if-changed={}", list.display());
    let args = [
        "-Xlinker".to_string(),
        format!("--symbol-ordering-file={}", list.display()),
        "-Xlinker".to_string(),
        "--no-warn-symbol-ordering".to_string(),
    ];
    if !linker_takes(&args) {
        println!("cargo:warning=the linker does not take --symbol-ordering-file: weft's code is laid out by the linker alone");
        return;
    }
    for a in args {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}

/// Links an empty program with `args`, the target, linker and rustflags of this build.
fn linker_takes(args: &[String]) -> bool {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let src = out.join("order_probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg(&src)
        .arg("-o")
        .arg(out.join("order_probe"))
        .arg("--target")
        .arg(std::env::var("TARGET").unwrap_or_default());
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    for a in args {
        cmd.arg("-C").arg(format!("link-arg={a}"));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
