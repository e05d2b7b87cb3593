//! Hostile stages against one host, one after another in this process: each
//! attack ends in the right typed error within its deadline plus a margin,
//! the host answers the next request (of that pipeline and of another one)
//! correctly, and its resident memory returns to where it was.
#![allow(clippy::unwrap_used)]

use outpost_e2e::{Scratch, demo_dir, plugin};
use outpost_host::{EngineOptions, Host, Pipeline, RunError, StageError, Tensor};
use std::time::{Duration, Instant};

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn hostile(
    host: &Host,
    scratch: &Scratch,
    attack: &str,
    extra_config: &str,
    limits: &str,
    grants: &str,
) -> Pipeline {
    let toml = format!(
        "[pipeline]\nname = \"{attack}\"\ninputs = [\"x\"]\n[[stages]]\nname = \"attacker\"\ncomponent = \"{}\"\nconfig = {{ attack = \"{attack}\"{extra_config} }}\nlimits = {{ {limits} }}\ngrants = {{ {grants} }}\n",
        plugin("hostile").display()
    );
    let path = scratch.write(&format!("{attack}.toml"), toml);
    host.load_pipeline(&path)
        .unwrap_or_else(|e| panic!("{attack}: {e}"))
}

fn x() -> Vec<Tensor> {
    vec![Tensor::text("x", "go")]
}

fn stage_error(pipeline: &Pipeline) -> (StageError, Duration) {
    let started = Instant::now();
    match pipeline.run(x()) {
        Err(RunError::Stage(e)) => (e, started.elapsed()),
        other => panic!("{}: expected a stage error, got {other:?}", pipeline.name()),
    }
}

fn demo_still_works(demo: &Pipeline) {
    let out = demo
        .run(vec![Tensor::text("text", "stop the conveyor")])
        .unwrap();
    assert!(
        out[0].data.starts_with(b"stop_conveyor"),
        "{:?}",
        String::from_utf8_lossy(&out[0].data)
    );
}

#[test]
fn hostile_stages_fail_typed_and_the_host_carries_on() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions {
        fuel: true,
        ..EngineOptions::default()
    })
    .unwrap();
    let demo = host.load_pipeline(&demo_dir().join("intent.toml")).unwrap();
    let margin = Duration::from_millis(1500);

    // Warm up, then take the baseline.
    for _ in 0..20 {
        demo_still_works(&demo);
    }
    let baseline = rss_mib();

    type Check = fn(&StageError) -> bool;
    let attacks: Vec<(&str, &str, &str, &str, Check, &str, Duration)> = vec![
        (
            "loop",
            "",
            "timeout_ms = 300",
            "",
            |e| matches!(e, StageError::Timeout { limit_ms: 300, .. }),
            "timed out after 300 ms",
            Duration::from_millis(300),
        ),
        (
            "loop",
            "",
            "fuel = 5000000, timeout_ms = 60000",
            "",
            |e| {
                matches!(
                    e,
                    StageError::OutOfFuel {
                        limit: 5_000_000,
                        ..
                    }
                )
            },
            "ran out of fuel",
            Duration::ZERO,
        ),
        (
            "recurse",
            "",
            "",
            "",
            |e| matches!(e, StageError::Trap { .. }),
            "trapped: wasm trap:",
            Duration::ZERO,
        ),
        (
            "alloc",
            "",
            "memory_mib = 128",
            "",
            |e| matches!(e, StageError::MemoryLimit { limit_mib: 128, .. }),
            "memory limit of 128 MiB",
            Duration::ZERO,
        ),
        // A 1 GiB tensor cannot be built inside the default 256 MiB memory.
        (
            "huge-output",
            ", bytes = 1073741824",
            "",
            "",
            |e| matches!(e, StageError::MemoryLimit { .. }),
            "memory limit",
            Duration::ZERO,
        ),
        // One that fits in memory but not in the output limit.
        (
            "huge-output",
            ", bytes = 100000000",
            "memory_mib = 512, max_output_mib = 16",
            "",
            |e| matches!(e, StageError::OutputTooLarge { .. }),
            "over its limit of 16777216",
            Duration::ZERO,
        ),
        (
            "read-file",
            "",
            "",
            "",
            |e| matches!(e, StageError::Reported { .. }),
            "reading /etc/passwd",
            Duration::ZERO,
        ),
        (
            "list-root",
            "",
            "",
            "",
            |e| matches!(e, StageError::Reported { .. }),
            "listing /",
            Duration::ZERO,
        ),
        (
            "env",
            "",
            "",
            "",
            |e| matches!(e, StageError::Reported { .. }),
            "reading HOME: environment variable not found",
            Duration::ZERO,
        ),
        (
            "socket",
            ", address = \"127.0.0.1:9\"",
            "",
            "",
            |e| matches!(e, StageError::CapabilityDenied { .. }),
            "network access denied: the stage has no network grant",
            Duration::ZERO,
        ),
        (
            "unknown-model",
            "",
            "",
            "",
            |e| matches!(e, StageError::Reported { .. }),
            "not-granted",
            Duration::ZERO,
        ),
    ];
    for (attack, config, limits, grants, is_expected, words, deadline) in attacks {
        let pipeline = hostile(&host, &scratch, attack, config, limits, grants);
        for round in 0..2 {
            let (error, took) = stage_error(&pipeline);
            assert!(
                is_expected(&error),
                "{attack} ({limits}) round {round}: {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("pipeline '") && message.contains("stage 'attacker'"),
                "{message}"
            );
            assert!(message.contains(words), "{attack}: {message}");
            assert!(
                took <= deadline + margin,
                "{attack}: took {took:?}, deadline {deadline:?}"
            );
            demo_still_works(&demo);
        }
        drop(pipeline);
        let now = rss_mib();
        assert!(
            now <= baseline + 64,
            "{attack} ({limits}): resident memory {now} MiB, was {baseline} MiB before the attacks"
        );
    }

    // What is granted works: the clock only with clocks = true, the
    // environment only as given.
    let frozen = hostile(&host, &scratch, "clock", "", "", "");
    assert_eq!(frozen.run(x()).unwrap()[0].data, 0f32.to_le_bytes());
    let real = hostile(&host, &scratch, "clock", "", "", "clocks = true");
    let seconds = f32::from_le_bytes(real.run(x()).unwrap()[0].data[..4].try_into().unwrap());
    assert!(seconds > 1.7e9, "{seconds}");
    let env = hostile(
        &host,
        &scratch,
        "env",
        "",
        "",
        "env = [\"HOME=/home/stage\"]",
    );
    assert_eq!(env.run(x()).unwrap()[0].data, 11f32.to_le_bytes());
    let rootless = hostile(
        &host,
        &scratch,
        "read-file",
        "",
        "",
        &format!(
            "dirs = [{{ host = \"{}\", guest = \"/etc\" }}]",
            scratch.path().display()
        ),
    );
    std::fs::write(scratch.path().join("passwd"), b"stage-visible\n").unwrap();
    assert_eq!(rootless.run(x()).unwrap()[0].data, 14f32.to_le_bytes());

    // A granted address connects; another one is refused by name.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let granted = listener.local_addr().unwrap();
    let net = hostile(
        &host,
        &scratch,
        "socket",
        &format!(", address = \"{granted}\""),
        "",
        &format!("network = [\"{granted}\"]"),
    );
    assert_eq!(net.run(x()).unwrap()[0].data, 1f32.to_le_bytes());
    let elsewhere = hostile(
        &host,
        &scratch,
        "socket",
        ", address = \"127.0.0.1:9\"",
        "",
        &format!("network = [\"{granted}\"]"),
    );
    let (error, _) = stage_error(&elsewhere);
    assert!(
        matches!(error, StageError::CapabilityDenied { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("network access to 127.0.0.1:9 (TcpConnect) denied"),
        "{error}"
    );
}
