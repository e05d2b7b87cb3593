//! Both instance allocators serve the same results; the pooling one is
//! chosen by default where the address space allows it.

use outpost_e2e::{demo_dir, outpost};
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
