//! Operations: the Prometheus endpoint counts exactly what clients did; systemd hears
//! `READY=1` after attach and watchdog pings only while every dispatcher makes progress.

use vgpu_client::{Call, Wait};
use vgpu_ring::Opcode;
use vgpu_tests::system::{System, vm};

/// A free local port (bound, then released for the mediator).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("the metrics endpoint answers")
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_requests_and_errors_exactly() {
    let port = free_port();
    let mut system = System::start(
        &[('A', "")],
        &[vm(1, 'A', 2), vm(2, 'A', 0)],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    )
    .unwrap();
    let before = scrape(port);
    assert_eq!(
        sample(&before, r#"vgpu_requests_total{pool="A",vm="1",opcode="NOOP",status="success"}"#),
        Some(0.0),
        "{before}"
    );
    assert_eq!(sample(&before, r#"vgpu_vm_state{vm="1",state="attached"}"#), Some(1.0));
    assert_eq!(
        sample(&before, r#"vgpu_executor_info{pool="A",backend="cpu",device="cpu"}"#),
        Some(1.0)
    );

    let mut one = system.client(1, Wait::default()).unwrap();
    for _ in 0..100 {
        assert!(one.call(&Call::noop("COUNTED")).unwrap().succeeded());
    }
    for _ in 0..10 {
        assert_eq!(one.echo(&[7; 64]).unwrap(), [7; 64]);
    }
    // Seven requests whose shape the mediator refuses: n = 1000 floats, 16 bytes given.
    let mut two = system.client(2, Wait::default()).unwrap();
    let bad = Call {
        op: Opcode::VectorAdd,
        label: "BAD",
        args: [1000, 0, 0],
        input: &[0; 32],
        output_len: 16,
    };
    let mut code = None;
    for _ in 0..7 {
        let done = two.call(&bad).unwrap();
        assert!(!done.succeeded());
        assert!(code.is_none_or(|c| c == done.response.error));
        code = Some(done.response.error);
    }
    let code = code.unwrap();

    let text = scrape(port);
    let count =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in {text}"));
    assert_eq!(
        count(r#"vgpu_requests_total{pool="A",vm="1",opcode="NOOP",status="success"}"#),
        100.0
    );
    assert_eq!(
        count(r#"vgpu_requests_total{pool="A",vm="1",opcode="ECHO",status="success"}"#),
        10.0
    );
    assert_eq!(count(r#"vgpu_requests_total{pool="A",vm="1",opcode="NOOP",status="error"}"#), 0.0);
    assert_eq!(
        count(r#"vgpu_requests_total{pool="A",vm="2",opcode="VECTOR_ADD",status="error"}"#),
        7.0
    );
    assert_eq!(
        count(&format!(r#"vgpu_request_errors_total{{pool="A",vm="2",code="{code}"}}"#)),
        7.0
    );
    assert_eq!(count(r#"vgpu_request_errors_total{pool="A",vm="1",code="6"}"#), 0.0);
    // Refused requests never queue: 110 waited in the queue and ran.
    assert_eq!(count(r#"vgpu_queue_wait_seconds_count{pool="A"}"#), 110.0);
    assert_eq!(count(r#"vgpu_exec_seconds_count{pool="A",opcode="ECHO"}"#), 10.0);
    assert_eq!(count(r#"vgpu_queue_wait_seconds_bucket{le="+Inf",pool="A"}"#), 110.0);
    for (series, value) in [
        (r#"vgpu_inflight{vm="1"}"#, 0.0),
        (r#"vgpu_parked_responses{vm="1"}"#, 0.0),
        (r#"vgpu_queue_depth{pool="A",priority="2"}"#, 0.0),
        (r#"vgpu_ring_resets_total{vm="1"}"#, 0.0),
        (r#"vgpu_log_lines_suppressed_total{vm="2"}"#, 0.0),
        (r#"vgpu_vm_state{vm="2",state="quarantined"}"#, 0.0),
    ] {
        assert_eq!(count(series), value, "{series}");
    }
    assert!(count("vgpu_mediator_epoch") > 0.0);
    assert!(text.contains("# TYPE vgpu_dispatcher_busy_seconds counter"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let other = ureq::get(&format!("http://127.0.0.1:{port}/other")).call();
    assert!(matches!(other, Err(ureq::Error::StatusCode(404))), "{other:?}");

    drop((one, two));
    assert!(system.stop().unwrap().success());

    // A VM whose region is missing at start is quarantined, and shows as such.
    std::fs::remove_file(system.region(2)).unwrap();
    system.start_mediator_serving(&[], &[1]).unwrap();
    let text = scrape(port);
    assert_eq!(sample(&text, r#"vgpu_vm_state{vm="2",state="quarantined"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"vgpu_vm_state{vm="2",state="attached"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"vgpu_vm_state{vm="1",state="attached"}"#), Some(1.0));
    assert!(system.stop().unwrap().success());
}
