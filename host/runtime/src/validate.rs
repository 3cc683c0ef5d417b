//! Upload validation before anything is compiled: what a component may be,
//! what it may import and export, and how large its functions may be.

use crate::UploadError;

/// Interfaces a plugin may import, per package: kanon's own, and the WASI
/// that Rust's `wasm32-wasip2` std needs, all of it linked to nothing
/// (no files, no sockets, no environment).
const ALLOWED: &[(&str, &str, &[&str])] = &[
    ("kanon:plugin", "0.1.", &["types", "data", "gate"]),
    (
        "wasi:cli",
        "0.2.",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:io", "0.2.", &["error", "poll", "streams"]),
    ("wasi:clocks", "0.2.", &["wall-clock", "monotonic-clock"]),
    ("wasi:random", "0.2.", &["random", "insecure", "insecure-seed"]),
];

const MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_LAYER: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_LAYER: [u8; 4] = [0x0d, 0, 1, 0];

/// Refuse what is not a component, or too large, before compiling.
pub(crate) fn check_bytes(bytes: &[u8], max_bytes: usize) -> Result<(), UploadError> {
    if bytes.len() > max_bytes {
        return Err(UploadError::TooLarge { size: bytes.len(), max: max_bytes });
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(UploadError::NotWasm);
    }
    match bytes[4..8].try_into().expect("4 bytes") {
        COMPONENT_LAYER => Ok(()),
        CORE_MODULE_LAYER => Err(UploadError::CoreModule),
        _ => Err(UploadError::NotWasm),
    }
}

/// Whether an import name (`ns:pkg/iface@version`) is in the allowed set.
pub(crate) fn is_allowed_import(name: &str) -> bool {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else { return false };
    ALLOWED
        .iter()
        .any(|(p, v, interfaces)| *p == package && version.starts_with(v) && interfaces.contains(&interface))
}

/// The plugin world's exports: what `manifest()` and `run()` are called by.
const REQUIRED_EXPORTS: [&str; 2] = ["manifest", "run"];

/// Largest core function body accepted. The compiler's time and memory grow
/// faster than linearly in one function's size; Rust plugins' largest are
/// tens of KiB, so a cap far above that refuses only what is built to hurt.
pub(crate) const MAX_FUNCTION_BYTES: usize = 1 << 20;

/// Read the component's structure without compiling it: every import must
/// be in the allowed set (the first one that is not is named), the top
/// level must export the plugin world's functions, and no core function
/// may be larger than [`MAX_FUNCTION_BYTES`]. Linear in the bytes, and
/// nothing it reads is kept.
pub(crate) fn check_component(bytes: &[u8]) -> Result<(), UploadError> {
    use wasmparser::{ComponentExternalKind, ComponentTypeRef, Parser, Payload};

    let invalid = |e: wasmparser::BinaryReaderError| UploadError::Invalid(e.to_string());
    // Nesting depth: 1 is the uploaded component itself.
    let mut depth = 0usize;
    let mut refused: Vec<String> = Vec::new();
    let mut exports: Vec<&str> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(imports) if depth == 1 => {
                for import in imports {
                    let import = import.map_err(invalid)?;
                    // A type import names a type (wit-component imports the
                    // types of the exports' signatures); it carries no
                    // capability, and the linker refuses one it cannot meet.
                    if !matches!(import.ty, ComponentTypeRef::Type(_)) && !is_allowed_import(import.name.name)
                    {
                        refused.push(import.name.name.to_owned());
                    }
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(invalid)?;
                    if export.kind == ComponentExternalKind::Func {
                        exports.push(export.name.name);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                if size > MAX_FUNCTION_BYTES {
                    return Err(UploadError::FunctionTooLarge { size, max: MAX_FUNCTION_BYTES });
                }
            }
            _ => {}
        }
    }
    refused.sort();
    if let Some(first) = refused.into_iter().next() {
        return Err(UploadError::RefusedImport(first));
    }
    match REQUIRED_EXPORTS.iter().find(|name| !exports.contains(name)) {
        Some(missing) => Err(UploadError::WrongWorld(format!("it exports no `{missing}` function"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_set_is_exact() {
        for ok in [
            "kanon:plugin/data@0.1.0",
            "wasi:cli/stdout@0.2.6",
            "wasi:io/streams@0.2.0",
            "wasi:random/random@0.2.3",
        ] {
            assert!(is_allowed_import(ok), "{ok}");
        }
        for refused in [
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.0",
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:cli/stdout@0.3.0",
            "kanon:plugin/data@0.2.0",
            "kanon:plugin/admin@0.1.0",
            "wasi:cli/stdout",
            "env",
        ] {
            assert!(!is_allowed_import(refused), "{refused}");
        }
    }

    #[test]
    fn bytes_are_checked_before_compiling() {
        assert_eq!(check_bytes(b"\0asm\x01\0\0\0", 100), Err(UploadError::CoreModule));
        assert_eq!(check_bytes(b"\0asm\x0d\0\x01\0", 100), Ok(()));
        assert_eq!(check_bytes(b"PK\x03\x04 not wasm", 100), Err(UploadError::NotWasm));
        assert_eq!(check_bytes(b"\0as", 100), Err(UploadError::NotWasm));
        assert_eq!(check_bytes(&[0; 101], 100), Err(UploadError::TooLarge { size: 101, max: 100 }));
    }
}
