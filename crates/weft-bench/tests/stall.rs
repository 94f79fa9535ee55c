//! Open-loop vs closed-loop against a server that stalls once for 1 s:
//! the open-loop run must show the stall in its corrected tail latency
//! (coordinated-omission correction), the closed-loop run hides it.

mod common;

use std::time::Duration;

use common::{args, h1_stall_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn open_loop_sees_stall_closed_loop_hides_it() {
    // Open-loop: 1000 req/s for 4 s over one connection.
    let server = h1_stall_server(Duration::from_secs(1), Duration::from_secs(1));
    let url = format!("http://{}/", server.addr);
    let open = weft_bench::run_bench(&args(&format!("{url} -c 1 --rate 1000 -d 4s --timeout 5s")))
        .await
        .expect("open-loop run");
    drop(server);

    // Closed-loop against a fresh server with the same stall.
    let server = h1_stall_server(Duration::from_secs(1), Duration::from_secs(1));
    let url = format!("http://{}/", server.addr);
    let closed = weft_bench::run_bench(&args(&format!("{url} -c 1 -d 4s --timeout 5s")))
        .await
        .expect("closed-loop run");
    drop(server);

    eprintln!(
        "open-loop: requests {} p99.9 corrected {}us service {}us max {}us | closed-loop: requests {} p99.9 {}us max {}us",
        open.requests,
        open.latency.p999_us,
        open.service_time.p999_us,
        open.latency.max_us,
        closed.requests,
        closed.latency.p999_us,
        closed.latency.max_us
    );

    assert_eq!(open.mode, "open-loop");
    assert_eq!(open.errors_total, 0, "{:?}", open.errors);
    assert_eq!(closed.errors_total, 0, "{:?}", closed.errors);
    // Request count = rate × duration (±5%).
    let expected = 4000.0;
    let got = open.requests as f64;
    assert!(
        (got - expected).abs() <= 0.05 * expected,
        "open-loop sent {got} requests, expected about {expected}"
    );
    assert_eq!(open.requests, open.responses);
    // The 1 s stall held back ~1000 scheduled requests: their latency, from
    // the scheduled time, lands in the tail.
    assert!(
        open.latency.p999_us >= 500_000,
        "corrected p99.9 {}us < 500ms",
        open.latency.p999_us
    );
    assert!(open.latency.max_us >= 900_000);
    // The uncorrected (service-time) view hides most of it: only one request
    // waited at the server.
    assert!(open.service_time.p999_us < open.latency.p999_us);
    // Closed-loop: only one request saw the stall.
    assert!(closed.latency.max_us >= 900_000, "closed-loop missed the stall");
    assert!(
        open.latency.p999_us > 5 * closed.latency.p999_us,
        "open p99.9 {}us not > 5 x closed p99.9 {}us",
        open.latency.p999_us,
        closed.latency.p999_us
    );
}
