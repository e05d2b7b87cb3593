//! Both instance allocators serve the same results; the pooling one is
//! chosen by default where the address space allows it.

use outpost_e2e::{demo_dir, outpost, outpost_with_address_space};
use outpost_host::{Allocator, EngineOptions, Host, Tensor};

#[test]
fn pooling_and_on_demand_give_the_same_answers() {
    let run = |allocator: &str| {
        let r = outpost(&[
            "--allocator",
            allocator,
            "run",
            "--insecure-unsigned",
            "host/pipelines/demo/intent.toml",
            "-i",
            "land the drone",
        ]);
        assert!(r.ok, "{allocator}: {}", r.stderr);
        r.json()["results"][0]["outputs"].to_string()
    };
    assert_eq!(run("pooling"), run("on-demand"));
}

#[test]
fn the_engine_reports_the_allocator_it_uses() {
    for kind in [Allocator::Pooling, Allocator::OnDemand] {
        let host = Host::new(&EngineOptions {
            allocator: Some(kind),
            ..EngineOptions::default()
        })
        .unwrap();
        assert_eq!(host.runtime().allocator(), kind);
        let pipeline = host.load_pipeline(&demo_dir().join("intent.toml")).unwrap();
        // More requests than instances kept idle, to cycle instances.
        for _ in 0..20 {
            let out = pipeline
                .run(vec![Tensor::text("text", "take off")])
                .unwrap();
            assert!(out[0].data.starts_with(b"take_off"));
        }
    }
    // On a 64-bit host with a normal address space, auto picks pooling.
    let host = Host::new(&EngineOptions::default()).unwrap();
    assert_eq!(host.runtime().allocator(), Allocator::Pooling);
}

/// The engine layout `outpost -v` reports on stderr.
fn layout(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("engine: "))
        .unwrap_or_else(|| panic!("no 'engine:' line in:\n{stderr}"))
}

fn outputs(r: &outpost_e2e::Run) -> String {
    assert!(r.ok, "{}", r.stderr);
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outputs"].to_string())
        .collect()
}

/// Under `ulimit -v 2000000` (2 GB: a guarded 4 GiB memory cannot even be
/// reserved) the demo and MiniLM-L3 run with explicit bounds checks and
/// answer exactly as with the whole address space.
#[test]
fn the_demo_and_minilm_run_in_a_2_gb_address_space() {
    let model = outpost_e2e::fetched("minilm-l3.onnx");
    assert!(model.exists());
    for (pipeline, input) in [
        ("host/pipelines/demo/intent.toml", "stop the conveyor"),
        (
            "host/pipelines/minilm/minilm-l3.toml",
            "A man is eating food.",
        ),
    ] {
        let args = [
            "-v",
            "run",
            "--insecure-unsigned",
            "--no-cache",
            pipeline,
            "-i",
            input,
        ];
        let small = outpost_with_address_space(2_000_000, &args);
        assert_eq!(
            layout(&small.stderr),
            "on-demand, explicit bounds checks",
            "{pipeline}"
        );
        let whole = outpost(&args);
        assert!(
            layout(&whole.stderr).ends_with("guard pages"),
            "{}",
            whole.stderr
        );
        assert_eq!(outputs(&small), outputs(&whole), "{pipeline}");
    }
}

/// Asking for guard pages where they cannot fit fails with an error that
/// says so and what to use instead; it never crashes.
#[test]
fn guard_pages_in_a_small_address_space_fail_clearly() {
    let r = outpost_with_address_space(
        2_000_000,
        &[
            "--memory-bounds",
            "guard-pages",
            "run",
            "--insecure-unsigned",
            "host/pipelines/demo/intent.toml",
            "-i",
            "stop the conveyor",
        ],
    );
    r.expect_error(&["address space", "--memory-bounds explicit"]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// In a 39-bit address space (Raspberry Pi OS kernels), modelled with
/// `ulimit -v` at 2^39 bytes, auto keeps guard pages and pools as many
/// instances as fit, and that pool is really reserved and serves.
#[test]
fn a_39_bit_address_space_gets_the_largest_guarded_pool_that_fits() {
    let r = outpost_with_address_space(
        1 << 29,
        &[
            "-v",
            "run",
            "--insecure-unsigned",
            "host/pipelines/demo/intent.toml",
            "-i",
            "stop the conveyor",
        ],
    );
    let layout = layout(&r.stderr);
    let instances: u32 = layout
        .strip_prefix("pooling (")
        .and_then(|l| l.strip_suffix(" instances), guard pages"))
        .unwrap_or_else(|| panic!("{layout}"))
        .parse()
        .unwrap();
    assert!(
        (outpost_host::MIN_POOL_INSTANCES..128).contains(&instances),
        "{layout}"
    );
    assert!(outputs(&r).contains("stop_conveyor"));
}
