//! `weft control` without the rest of the weft binary, for quick release builds and benchmarks:
//! `cargo run --release -p weft-control --example control -- --registry DIR`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: weft_control::cli::ControlArgs,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(weft_control::cli::run(cli.args));
}
