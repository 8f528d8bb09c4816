//! Compiles the XDP steering program (ebpf/xdp_steer.c) with clang so that a
//! plain `cargo build` always embeds an object built from the checked-in source.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let source = manifest.join("../ebpf/xdp_steer.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("xdp_steer.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    // The BPF target needs the multiarch include dir for <asm/types.h>.
    let multiarch = format!("/usr/include/{target_arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{clang}` to build the XDP program: {e}. \
                 Install clang and libbpf-dev (see README), or set CLANG."
            )
        });
    assert!(
        status.success(),
        "`{clang}` failed to compile {}",
        source.display()
    );
}
