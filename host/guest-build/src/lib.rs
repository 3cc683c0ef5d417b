//! What the build scripts of `kanon-bundled` and `kanon-fixtures` share:
//! compile chosen members of `plugins/` for `wasm32-wasip2` with a nested
//! `cargo build`, as wasmtime's test-programs do. `.wasm` files are never
//! committed, and each crate builds only the plugins it exposes, so the
//! `kanon` binary's build compiles no hostile fixture.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guests' target.
pub const TARGET: &str = "wasm32-wasip2";

/// Plugins shipped in the `kanon` binary; every other member is a test fixture.
pub const BUNDLED: &[&str] = &["emissions-benchmark", "absence-rate"];

/// A plugin crate of `plugins/`.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its package name, e.g. `hostile-reads-file`.
    pub package: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl Member {
    /// Whether the `kanon` binary ships it.
    pub fn is_bundled(&self) -> bool {
        BUNDLED.contains(&self.package.as_str())
    }
}

/// The `plugins/` directory, from the calling build script's crate
/// (`host/<crate>`).
pub fn plugins_dir() -> PathBuf {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run from a build script"));
    manifest_dir.join("../../plugins").canonicalize().expect("plugins/ next to host/")
}

/// Every plugin crate that builds a component, sorted by directory.
pub fn members(plugins: &Path) -> Vec<Member> {
    let mut dirs = Vec::new();
    for parent in [plugins.to_path_buf(), plugins.join("hostile")] {
        for entry in std::fs::read_dir(&parent).unwrap() {
            let dir = entry.unwrap().path();
            let manifest = dir.join("Cargo.toml");
            if dir.file_name().is_some_and(|n| n != "common") && manifest.exists() {
                dirs.push(dir);
            }
        }
    }
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let package = toml
                .lines()
                .find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
                .unwrap_or_else(|| panic!("no package name in {}", dir.display()))
                .to_owned();
            Member { package, dir }
        })
        .collect()
}

/// Builds `chosen` (members of `plugins/`) in release mode and returns each
/// one's `.wasm` path, in the order given. Prints the `rerun-if-changed`
/// lines for what they are built from (`extra_watched` too, relative to the
/// repository root).
pub fn build(plugins: &Path, chosen: &[Member], extra_watched: &[&str]) -> Vec<PathBuf> {
    let root = plugins.parent().expect("plugins/ has a parent");
    for watched in
        ["plugins/Cargo.toml", "plugins/Cargo.lock", "guest-sdk", "wit"].iter().chain(extra_watched)
    {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for member in chosen {
        println!("cargo:rerun-if-changed={}", member.dir.display());
    }

    ensure_target();
    let target_dir = guests_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--locked", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // The host build's flags (coverage, sanitizers) are not the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG");
    for member in chosen {
        build.args(["-p", &member.package]);
    }
    let status = build.status().expect("run cargo to build the plugins");
    assert!(status.success(), "building the plugins in {} failed", plugins.display());

    chosen
        .iter()
        .map(|member| {
            let wasm = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{}.wasm", member.package.replace('-', "_")));
            assert!(wasm.exists(), "missing {}", wasm.display());
            wasm
        })
        .collect()
}

/// One guest target directory per host profile directory (next to its
/// `build/`), so the bundled plugins and the fixtures share the guest SDK's
/// build; cargo's lock on it serialises the two nested builds. Falls back to
/// `OUT_DIR` when the layout is not the usual one.
fn guests_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("run from a build script"));
    match out_dir.ancestors().nth(3) {
        Some(profile) if out_dir.ancestors().nth(2).is_some_and(|b| b.ends_with("build")) => {
            profile.join("guest-plugins")
        }
        _ => out_dir.join("plugins-target"),
    }
}

/// Install the wasm target when it is missing, or say exactly how to.
fn ensure_target() {
    let installed = || {
        Command::new("rustc")
            .args(["--print", "target-libdir", "--target", TARGET])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .is_some_and(|dir| dir.exists())
    };
    if installed() {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup");
    let added = Command::new("rustup").args(["target", "add", TARGET]).status().is_ok_and(|s| s.success());
    if !added || !installed() {
        panic!("the {TARGET} target is missing; install it with: rustup target add {TARGET}");
    }
}
