//! A fast Dubbo2 + SOFARPC Bolt upstream for benchmarks: one port, the protocol of each connection
//! told by its first byte; every call's first argument is echoed back as its result (method `fail`:
//! an error status; `hang`: no answer), and every HTTP/1.1 request's body as its response. One core's worth of work on a single-threaded runtime, like
//! `grpc-echo` and the nginx origin of the HTTP scenarios. See `weft_bench::provider`.
//!
//! Usage: `rpc-echo 127.0.0.1:PORT` (prints `listening on ADDR` on stderr)

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:20880".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (bound, task) = weft_bench::provider::spawn(&addr).await.expect("bind");
        eprintln!("rpc-echo listening on {bound}");
        let _ = task.await;
    });
}
