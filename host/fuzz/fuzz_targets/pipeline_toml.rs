//! Pipeline files (`pipeline.toml`, from a directory or a bundle): parse
//! strictly into a `PipelineSpec`, then everything that needs no files or
//! engine:
//! - each stage's tensor maps and the grants `outpost bundle` signs
//!   (`bundling::manifest_grants`), which must survive the manifest being
//!   written and parsed again (the loader compares them with the pipeline's);
//! - those grants checked against a device policy that allows nothing and
//!   one that allows a prefix, an address and a variable;
//! - the rewrite `outpost bundle` makes (file paths become blob digests),
//!   which must parse again as a pipeline with the same stages and grants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_host::bundling::manifest_grants;
use outpost_host::pipeline::spec::PipelineSpec;
use outpost_host::policy::DevicePolicy;
use outpost_signing::manifest::{BlobEntry, BlobKind, BundleInfo, Grants, Manifest};
use std::collections::BTreeMap;
use std::sync::LazyLock;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

static POLICIES: LazyLock<[DevicePolicy; 2]> = LazyLock::new(|| {
    let permissive = r#"
[grants]
dirs = ["/srv"]
writable_dirs = ["/var/lib/outpost-data"]
env = ["TZ", "LANG"]
network = ["127.0.0.1:1883"]
clocks = false
"#;
    [
        DevicePolicy::default(),
        DevicePolicy::parse(permissive, "fuzz policy").expect("the fuzz policy parses"),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = toml::from_str::<PipelineSpec>(text) else {
        return;
    };
    for stage in &spec.stages {
        let _ = stage.inputs.pairs();
        let _ = stage.outputs.as_ref().map(|o| o.pairs());
    }
    let grants: BTreeMap<String, Grants> = spec
        .stages
        .iter()
        .map(|s| (s.name.clone(), manifest_grants(s)))
        .filter(|(_, g)| !g.is_empty())
        .collect();

    // Signed as `outpost bundle` does, read back as a device does.
    let manifest = Manifest {
        bundle: BundleInfo {
            name: "fuzz".into(),
            version: 1,
            pipeline: DIGEST.into(),
        },
        blobs: BTreeMap::from([(
            DIGEST.to_owned(),
            BlobEntry {
                size: data.len() as u64,
                kind: BlobKind::Pipeline,
                name: "pipeline.toml".into(),
                precompiled: None,
            },
        )]),
        grants,
    };
    let written = manifest.to_toml().expect("a manifest serializes");
    // Past the manifest size limit the device refuses it; that is no bug.
    if let Ok(read) = Manifest::parse(written.as_bytes()) {
        assert_eq!(read.grants, manifest.grants, "grants change when signed");
    }
    for policy in POLICIES.iter() {
        let _ = policy.check_grants(&manifest);
    }

    // The rewrite `outpost bundle` makes: file paths become digests.
    let mut table: toml::Table = toml::from_str(text).expect("a pipeline parses as a table");
    let digest = || toml::Value::String(DIGEST.into());
    if let Some(models) = table.get_mut("models").and_then(toml::Value::as_table_mut) {
        for (_, model) in models.iter_mut() {
            if let Some(path) = model.get_mut("path").filter(|p| p.is_str()) {
                *path = digest();
            }
        }
    }
    if let Some(stages) = table.get_mut("stages").and_then(toml::Value::as_array_mut) {
        for stage in stages.iter_mut() {
            if let Some(component) = stage.get_mut("component").filter(|c| c.is_str()) {
                *component = digest();
            }
            if let Some(files) = stage.get_mut("files").and_then(toml::Value::as_table_mut) {
                for (_, file) in files.iter_mut() {
                    if file.is_str() {
                        *file = digest();
                    }
                }
            }
        }
    }
    let rewritten = match toml::to_string(&table) {
        Ok(rewritten) => rewritten,
        Err(e) => panic!("a parsed pipeline does not write back: {e}"),
    };
    let bundled = match toml::from_str::<PipelineSpec>(&rewritten) {
        Ok(bundled) => bundled,
        Err(e) => panic!("the bundled pipeline does not parse: {e}\n{rewritten}"),
    };
    assert_eq!(bundled.stages.len(), spec.stages.len());
    for (a, b) in spec.stages.iter().zip(&bundled.stages) {
        assert_eq!(a.name, b.name);
        assert_eq!(manifest_grants(a), manifest_grants(b), "stage '{}'", a.name);
        assert_eq!(a.inputs.pairs(), b.inputs.pairs());
        // Debug, not ==: a `nan` in a config is the same nan.
        assert_eq!(format!("{:?}", a.config), format!("{:?}", b.config));
    }
    assert_eq!(
        spec.models.keys().collect::<Vec<_>>(),
        bundled.models.keys().collect::<Vec<_>>()
    );
    assert_eq!(spec.pipeline.inputs, bundled.pipeline.inputs);
    assert_eq!(spec.pipeline.outputs, bundled.pipeline.outputs);
});
