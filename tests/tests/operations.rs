//! Operations: the Prometheus endpoint counts exactly what clients did; systemd hears
//! `READY=1` after attach and watchdog pings only while every dispatcher makes progress.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use vgpu_client::{Call, Wait};
use vgpu_ring::Opcode;
use vgpu_tests::system::{System, vm, wait_for};

/// A free local port (bound, then released for the mediator).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The text of `/metrics` (the endpoint opens just after the regions are attached).
fn scrape(port: u16) -> String {
    let mut text = String::new();
    wait_for("the metrics endpoint", Duration::from_secs(10), || {
        let response = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call();
        response.and_then(|mut r| r.body_mut().read_to_string()).map(|t| text = t).is_ok()
    })
    .unwrap();
    text
}

/// A request the mediator refuses: VECTOR_ADD of 1000 floats with 32 bytes of input.
const BAD_SHAPE: Call<'static> = Call {
    op: Opcode::VectorAdd,
    label: "BAD",
    args: [1000, 0, 0],
    input: &[0; 32],
    output_len: 16,
};

/// Two VMs of pool A (priorities 2 and 0) served by a mediator with metrics on; the port.
fn system_with_metrics() -> (System, u16) {
    let port = free_port();
    let system = System::start(
        &[('A', "")],
        &[vm(1, 'A', 2), vm(2, 'A', 0)],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    )
    .unwrap();
    (system, port)
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_requests_and_errors_exactly() {
    let (mut system, port) = system_with_metrics();
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
    // Seven requests of a shape the mediator refuses.
    let mut two = system.client(2, Wait::default()).unwrap();
    let mut code = None;
    for _ in 0..7 {
        let done = two.call(&BAD_SHAPE).unwrap();
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
    assert!(count(r#"vgpu_dispatcher_passes_total{pool="A"}"#) > 0.0, "{text}");
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

/// The mediator as a `Type=notify` service: `READY=1` once the regions are attached,
/// `STATUS=` lines, `WATCHDOG=1` pings while the dispatchers make progress and none
/// once one hangs (test hook), `STOPPING=1` at shutdown.
#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let mut system =
        System::start(&[('A', ""), ('B', "")], &[vm(1, 'A', 1), vm(2, 'B', 1)], "").unwrap();
    assert!(system.stop().unwrap().success());
    let socket_path = system.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    system.set_mediator_env("NOTIFY_SOCKET", socket_path.to_str().unwrap());
    system.set_mediator_env("WATCHDOG_USEC", "200000");
    system.set_mediator_env("VGPU_TEST_HOOK_HANG", "1");
    system.start_mediator(&[]).unwrap();

    let receive = |done: &dyn Fn(&[String], Instant) -> bool| {
        let start = Instant::now();
        let mut messages = Vec::new();
        let mut buf = [0u8; 4096];
        while !done(&messages, start) {
            assert!(start.elapsed() < Duration::from_secs(30), "still waiting: {messages:?}");
            // The read timeout (100 ms) bounds each wait.
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        messages
    };
    let pings = |messages: &[String]| messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    // READY, then pings, then (a second later) the first periodic STATUS line.
    let messages = receive(&|m, _| {
        pings(m) >= 5 && m.iter().skip(1).any(|m| m.starts_with("STATUS=serving 2 VMs"))
    });
    assert!(
        messages[0].starts_with("READY=1\nSTATUS=serving 2 VMs, 0 quarantined"),
        "{messages:?}"
    );

    // Pool B's dispatcher hangs: after its stall limit (heartbeat + 1 s) the pings stop.
    let mut client = system.client(2, Wait::default()).unwrap();
    let _hung = client.submit(&Call::noop("TEST_HANG")).unwrap();
    system.wait_lines("Pool B: dispatcher made no progress", 1).unwrap();
    // What was sent up to the log line: read until 100 ms pass without a message (at
    // most 50, so that pings that never stop fail below instead of looping here).
    let mut buf = [0u8; 4096];
    let before: Vec<String> = std::iter::from_fn(|| {
        socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into())
    })
    .take(50)
    .collect();
    // No ping over two seconds (ten watchdog half-periods), and the status says why.
    let hung = |m: &[String]| m.iter().any(|m| m.contains("1 dispatchers hung"));
    let after = receive(&|m, start| start.elapsed() > Duration::from_secs(2) && hung(m));
    assert_eq!(pings(&after), 0, "pings after the hang: {after:?} (before: {before:?})");
    // Pool A is still served.
    let mut other = system.client(1, Wait::default()).unwrap();
    assert!(other.call(&Call::noop("STILL_SERVED")).unwrap().succeeded());
    system.kill_mediator().unwrap();
}

/// A clean stop says STOPPING=1.
#[test]
fn systemd_hears_stopping() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    assert!(system.stop().unwrap().success());
    let socket_path = system.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    system.set_mediator_env("NOTIFY_SOCKET", socket_path.to_str().unwrap());
    system.start_mediator(&[]).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1\n"));
    assert!(system.stop().unwrap().success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= buf[..n].starts_with(b"STOPPING=1\n");
    }
    assert!(stopping);
}

/// `ivshmem-setup doctor` sees the live mediator of each region, and a dead one.
#[test]
fn doctor_sees_a_live_mediator_and_a_dead_one() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let doctor = |system: &System| {
        std::process::Command::new(&system.binaries().setup)
            .args(["doctor", "--config"])
            .arg(system.config())
            .output()
            .unwrap()
    };
    let out = doctor(&system);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("ok   mediator: vm 1: epoch"), "{text}");
    system.kill_mediator().unwrap();
    // The heartbeat (every 20 ms) counts as stale after three intervals and a second.
    let mut out = doctor(&system);
    wait_for("doctor to see the dead mediator", Duration::from_secs(20), || {
        out = doctor(&system);
        out.status.code() == Some(1)
    })
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("FAIL mediator: vm 1: epoch"), "{text}");
    assert!(text.contains("no heartbeat for"), "{text}");
}

/// `ivshmem-setup top` prints one snapshot when stdout is not a terminal: the VMs'
/// states, rates from the regions, errors and queue wait from the metrics.
#[test]
fn top_shows_rates_errors_and_queue_wait() {
    let (mut system, port) = system_with_metrics();
    scrape(port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut one = system.client(1, Wait::default()).unwrap();
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                one.call(&Call::noop("LOAD")).unwrap();
                assert!(!one.call(&BAD_SHAPE).unwrap().succeeded());
                sent += 2;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };
    let out = std::process::Command::new(&system.binaries().setup)
        .args(["top", "--config"])
        .arg(system.config())
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(!text.contains('\x1b'), "no escape codes when not a terminal: {text:?}");
    let row = |vm: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(vm))
            .unwrap_or_else(|| panic!("no row for vm {vm}: {text}"))
    };
    let (one, two) = (row("1"), row("2"));
    assert_eq!(&one[1..4], ["A", "2", "served"], "{text}");
    assert!(one[5].parse::<f64>().unwrap() > 0.0, "requests/s: {text}");
    assert!(one[6].parse::<f64>().unwrap() > 0.0, "errors/s: {text}");
    assert_ne!(one[7], "-", "queue wait p50: {text}");
    assert_eq!(&two[1..7], ["A", "0", "served", "0", "0", "0"], "{text}");
    // The pool's line: its requests per second over its dispatcher's passes.
    let pool = text.lines().find(|l| l.starts_with("pool A: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(pool.ends_with(" requests per pass"), "{text}");
    assert!(system.stop().unwrap().success());
}
