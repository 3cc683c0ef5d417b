//! Upload validation and the compiled-artifact cache.

use kanon_runtime::{CacheOutcome, Runtime, RuntimeConfig, UploadError};
use kanon_tests::{run_on_trips, runtime, test_limits};

#[test]
fn what_is_not_a_plugin_component_is_refused_with_a_reason() {
    let rt = runtime();
    assert_eq!(rt.load(b"").unwrap_err(), UploadError::NotWasm);
    assert_eq!(rt.load(b"#!/bin/sh\nrm -rf /\n").unwrap_err(), UploadError::NotWasm);
    // A valid, empty core module: the old module format, not a component.
    assert_eq!(rt.load(b"\0asm\x01\0\0\0").unwrap_err(), UploadError::CoreModule);
    // The component header followed by garbage.
    let err = rt.load(b"\0asm\x0d\0\x01\0\xff\xff\xff\xff").unwrap_err();
    assert!(matches!(err, UploadError::Invalid(_)), "{err}");
    // A valid component that is not a plugin: exports nothing.
    let err = rt.load(b"\0asm\x0d\0\x01\0").unwrap_err();
    assert!(matches!(err, UploadError::WrongWorld(_)), "{err}");
    // A truncated plugin.
    let plugin = kanon_bundled::EMISSIONS_BENCHMARK;
    let err = rt.load(&plugin[..plugin.len() / 2]).unwrap_err();
    assert!(matches!(err, UploadError::Invalid(_)), "{err}");
}

#[test]
fn oversized_components_are_refused_before_compiling() {
    let small =
        Runtime::new(RuntimeConfig { max_component_bytes: 1000, ..RuntimeConfig::default() }).unwrap();
    let size = kanon_bundled::EMISSIONS_BENCHMARK.len();
    assert_eq!(
        small.load(kanon_bundled::EMISSIONS_BENCHMARK).unwrap_err(),
        UploadError::TooLarge { size, max: 1000 }
    );
}

#[test]
fn the_manifest_is_read_at_upload() {
    let plugin = runtime().load(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    assert_eq!(plugin.hash, blake3::hash(kanon_bundled::EMISSIONS_BENCHMARK).to_hex().as_str());
    let m = &plugin.manifest;
    assert_eq!(m.name, "emissions-benchmark");
    assert_eq!(m.inputs[0].name, "trips");
    assert_eq!(m.inputs[0].columns.len(), 6);
    assert_eq!(m.outputs[0].dimensions.len(), 2);
    assert_eq!(m.params[0].name, "kg_co2_per_litre");
}

#[test]
fn a_restart_loads_the_compiled_artifact_and_a_corrupt_one_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        limits: test_limits(),
        ..RuntimeConfig::default()
    };
    let load = || Runtime::new(config()).unwrap().load(kanon_bundled::EMISSIONS_BENCHMARK).unwrap().cache;
    assert_eq!(load(), CacheOutcome::Compiled);
    assert_eq!(load(), CacheOutcome::Hit);

    // Flip a byte in the artifact: the checksum catches it.
    let artifact = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact was written");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, bytes).unwrap();
    let runtime = Runtime::new(config()).unwrap();
    let plugin = runtime.load(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    assert_eq!(plugin.cache, CacheOutcome::Compiled);
    assert!(runtime.run(&plugin, kanon_tests::request(kanon_tests::trips(), "{}")).unwrap().outcome.is_ok());
    assert_eq!(load(), CacheOutcome::Hit);
}

#[test]
fn runs_do_not_share_state() {
    let plugin = runtime().load(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let first = run_on_trips(&plugin).outcome.unwrap();
    let second = run_on_trips(&plugin).outcome.unwrap();
    assert_eq!(first, second, "a second run on a fresh instance sees nothing of the first");
}
