//! Release builds of `weft` place the request path's functions side by side.
//!
//! `hot-code.txt` (written by `bench/code-order`) lists the functions that run for every proxied
//! request, hottest first; the linker puts them at the start of the text segment in that order
//! (lld's `--symbol-ordering-file`). Scattered over a 35 MiB text segment they kept ~8 MiB of code
//! resident in an idle proxy that had served requests (the kernel maps 64 KiB around each page
//! first touched) and spread every request over that many pages. Names that no longer exist after
//! a code change are skipped.
//!
//! Only for release builds of x86_64 Linux (GNU), where rustc links with its own lld by default;
//! `WEFT_NO_CODE_ORDER` set, or rustflags that choose another linker, leave the order to the linker.

fn main() {
    println!("cargo:rerun-if-changed=hot-code.txt");
    println!("cargo:rerun-if-env-changed=WEFT_NO_CODE_ORDER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let release = env("PROFILE") == "release";
    let target = env("TARGET") == "x86_64-unknown-linux-gnu";
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = flags.contains("fuse-ld") || flags.contains("linker");
    if !release || !target || other_linker || std::env::var_os("WEFT_NO_CODE_ORDER").is_some() {
        return;
    }
    let list = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("hot-code.txt");
    if list.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
