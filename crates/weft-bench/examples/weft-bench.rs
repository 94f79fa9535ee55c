//! Stand-alone `weft bench` for trying the crate without the main binary:
//! `cargo run --release -p weft-bench --example weft-bench -- http://127.0.0.1:8080/ -d 5s`
//! (or `-- https://localhost:8443/ --cacert ca.pem -d 5s` for a TLS target)

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "weft bench: open-loop HTTP(S)/gRPC/TCP/Dubbo2/Bolt load generator"
)]
struct Cli {
    #[command(flatten)]
    args: weft_bench::BenchArgs,
}

fn main() {
    std::process::exit(weft_bench::run(Cli::parse().args));
}
